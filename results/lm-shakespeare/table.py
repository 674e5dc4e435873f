"""Writes quick.md from runs.parquet beside it: test bits/char, perplexity, next-token accuracy
and ECE, pass@N, distinct-n / repetition of samples, tokens/s and the loss's peak memory of
ce / cce / emo / dco on each Tiny Shakespeare task, mean ± std over seeds (last epoch)."""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
runs = pd.read_parquet(HERE / "runs.parquet")
runs = runs[runs["status"] == "ok"]
ORDER = ["ce", "cce", "emo", "dco"]
METRICS = {"bpc": "test_bpc", "ppl": "test_ppl", "acc %": "test_acc", "ECE %": "test_ece",
           "pass@1 %": "test_pass@1", "pass@64 %": "test_pass@64", "distinct-2": "distinct_2",
           "distinct-4": "distinct_4", "rep-4": "rep_4", "tokens/s": "tokens_per_s",
           "loss MB": "loss_peak_mb"}
DIGITS = {"tokens_per_s": 0, "loss_peak_mb": 1, "distinct_2": 3, "distinct_4": 3, "rep_4": 3,
          "test_bpc": 3}


def cell(stats: pd.DataFrame, key: tuple[str, str, str], metric: str) -> str:
    if key not in stats.index:
        return "—"
    d = DIGITS.get(metric, 2)
    return f"{stats.loc[key, 'mean']:.{d}f} ± {stats.loc[key, 'std']:.{d}f}"


stats = runs[runs["metric"].isin(METRICS.values())].groupby(
    ["task", "loss", "metric"])["value"].agg(["mean", "std", "count"])
counts = runs.drop_duplicates("run_key").groupby(["task", "loss"]).size()
sections = []
for task in sorted(runs["task"].unique()):
    lines = [[loss, str(counts.get((task, loss), 0)),
              *[cell(stats, (task, loss, m), m) for m in METRICS.values()]]
             for loss in ORDER if (task, loss) in counts.index]
    table = pd.DataFrame(lines, columns=["loss", "n", *METRICS]).to_markdown(index=False)
    sections.append(f"## {task}\n\n{table}")
text = (
    "# Language modelling on Tiny Shakespeare: CE, Cut Cross-Entropy, EMO, DCO (quick budget)\n\n"
    "Tasks `shakespeare-char` (65 symbols; 600 steps) and `shakespeare-bpe` (byte-level BPE, "
    "4,096 tokens, trained on the training split; 300 steps): a 4-layer, 4-head, width-128 "
    "causal transformer, block 128, batch 32, AdamW lr 2e-3 with a cosine schedule; first 90% "
    "of the characters train, the next 5% validate, the last 5% test. Default loss settings "
    "(`dco` N = 4, `emo` with the live embedding cost). Last epoch, mean ± std over the seeds "
    "(n). bpc (bits per character) compares across tokenisations, perplexity does not. "
    "distinct-n and rep-4 are over 16 samples drawn at temperature 1 (400 tokens char, 120 "
    "BPE). tokens/s and the loss's peak memory were measured on the 2-core CPU box while other "
    "work shared it (one or two runs at a time, other jobs beside the first seeds): indicative "
    "only. Made by `python results/lm-shakespeare/table.py` from runs.parquet (commands in "
    "docs/REPRODUCTION.md).\n\n" + "\n\n".join(sections) + "\n"
)
(HERE / "quick.md").write_text(text)
print(text)
