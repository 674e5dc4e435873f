"""The lm family on a tiny text the tests write: splits, tokenisers and their cache, training
windows, the loss adapter, the model, metrics, spec checks and end-to-end CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data import text as text_data
from lossbench.data.text import bpe_key, load_corpus, split_text
from lossbench.engine.grid import expand_losses
from lossbench.engine.train import TrainConfig, Trainer
from lossbench.errors import UserError
from lossbench.families.lm import (
    TokenLoss,
    TokenWindows,
    build_loss,
    check_spec,
    eval_blocks,
    window_sampler,
)
from lossbench.losses import LOSSES
from lossbench.metrics_lm import TokenScores, distinct_n, pass_at_n, repetition
from lossbench.models import MODELS
from lossbench.spec import BUDGETS, resolve_task
from lossbench.tuning import criterion_for

runner = CliRunner()
WORDS = ("thou", "art", "the", "king", "of", "my", "heart", "and", "sweet", "love", "doth",
         "make", "night", "day", "to", "be", "or", "not")


def write_text(root: Path, chars: int = 12_000, seed: int = 0) -> str:
    """Pseudo-verse from a small word list, lines of 4-9 words, in ``root/input.txt``."""
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    while sum(len(line) + 1 for line in lines) < chars:
        words = rng.choice(WORDS, size=int(rng.integers(4, 10)))
        lines.append(" ".join(words).capitalize() + ("," if rng.random() < 0.5 else "."))
    text = "\n".join(lines)[:chars]
    root.mkdir(parents=True, exist_ok=True)
    (root / "input.txt").write_text(text, encoding="utf-8")
    return text


@pytest.fixture
def corpus_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fixture corpus and a private data home (the BPE cache goes beside it)."""
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path / "home" / "data"))
    text_data._load.cache_clear()
    write_text(tmp_path / "corpus")
    return tmp_path / "corpus"


# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------


def test_split_is_90_5_5_by_characters() -> None:
    text = "".join(chr(65 + i % 26) for i in range(1000))
    train, val, test = split_text(text)
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    assert train + val + test == text


def test_char_tokeniser_round_trips_and_counts_characters(corpus_dir: Path) -> None:
    corpus = load_corpus("tinyshakespeare", "char", dir=str(corpus_dir))
    text = (corpus_dir / "input.txt").read_text()
    _, _, test = split_text(text)
    assert corpus.decode(corpus.test.ids.tolist()) == test
    assert corpus.vocab_size == len(set(split_text(text)[0]))
    assert corpus.test.chars == len(test) and corpus.test.ends[-1] == len(test)
    assert corpus.info["split_chars"] == [len(p) for p in split_text(text)]


def test_char_tokeniser_refuses_characters_unseen_in_training(tmp_path: Path) -> None:
    text = "ab" * 500 + "zzzz" * 20  # the z block starts after the first 90%
    (tmp_path / "input.txt").write_text(text)
    text_data._load.cache_clear()
    with pytest.raises(UserError, match=r"\['z'\] are not in the training split"):
        load_corpus("tinyshakespeare", "char", dir=str(tmp_path))


def test_missing_corpus_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data set 'tinyshakespeare' not found"):
        load_corpus("tinyshakespeare", "char", dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"unknown data\.corpus"):
        load_corpus("wikitext", "char")


def test_bpe_is_trained_on_the_training_split_only(corpus_dir: Path) -> None:
    """A word that occurs only in the test part never becomes a merged token."""
    pytest.importorskip("tokenizers")
    text = (corpus_dir / "input.txt").read_text()
    cut = int(0.95 * len(text))
    text = text[:cut] + ("\nzyxwvut qponm " * 200)[: len(text) - cut]
    (corpus_dir / "input.txt").write_text(text)
    text_data._load.cache_clear()
    corpus = load_corpus("tinyshakespeare", "bpe", 400, dir=str(corpus_dir))
    assert corpus.decode(corpus.test.ids.tolist()) == split_text(text)[2]
    test_only = corpus.decode([int(i) for i in corpus.test.ids if corpus.decode([int(i)])
                               .strip() in {"zyxwvut", "qponm"}])
    assert test_only == ""  # no whole-word token for the test-only words
    assert corpus.train.ends[-1] == len(split_text(text)[0])


def test_bpe_cache_is_keyed_by_corpus_and_settings(corpus_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tokenizers")
    first = load_corpus("tinyshakespeare", "bpe", 300, dir=str(corpus_dir))
    files = list(text_data.tokenizer_cache_dir().glob("bpe-300-*.json"))
    assert len(files) == 1 and first.info["bpe_hash"] in files[0].name
    text_data._load.cache_clear()

    def no_training(*args: object) -> None:
        raise AssertionError("the cached tokeniser should have been used")

    monkeypatch.setattr(text_data, "train_bpe", no_training)
    again = load_corpus("tinyshakespeare", "bpe", 300, dir=str(corpus_dir))
    np.testing.assert_array_equal(again.test.ids, first.test.ids)
    train = split_text((corpus_dir / "input.txt").read_text())[0]
    assert bpe_key(train, 300) != bpe_key(train, 301) != bpe_key(train + " ", 300)


def test_bpe_vocab_size_is_checked() -> None:
    with pytest.raises(UserError, match="vocab_size must be >= 257"):
        load_corpus("tinyshakespeare", "bpe", 100)


# ---------------------------------------------------------------------------------------------
# Training windows and the loss adapter.
# ---------------------------------------------------------------------------------------------


def test_windows_are_contiguous_slices_and_the_sampler_is_seeded() -> None:
    ids = torch.arange(100) * 3
    x, y = TokenWindows(ids[:-1], 8), TokenWindows(ids[1:], 8)
    starts = torch.tensor([0, 5, 91])
    assert len(x) == 92
    assert torch.equal(x[starts][1], ids[5:13]) and torch.equal(y[starts][2], ids[92:100])
    sample = window_sampler(3)
    batches = list(sample(x, 4, torch.Generator().manual_seed(1)))
    assert len(batches) == 3 and all(len(b) == 4 and int(b.max()) < len(x) for b in batches)
    again = list(sample(x, 4, torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


class Recorder(torch.nn.Module):
    """An inner loss that records what it was called with."""

    def forward(self, output: torch.Tensor, target: torch.Tensor, *, index=None, weight=None
                ) -> torch.Tensor:  # type: ignore[no-untyped-def]
        self.seen = (output, target, index, weight)
        return output.sum(dim=1)


def test_token_loss_flattens_and_maps_window_starts_to_token_positions() -> None:
    hidden = torch.randn(2, 3, 4)
    weight = torch.randn(5, 4)
    target = torch.randint(0, 5, (2, 3))
    inner = Recorder()
    out = TokenLoss(inner, "logits", lambda: weight)(hidden, target, index=torch.tensor([10, 40]))
    logits, flat_target, tokens, _ = inner.seen
    torch.testing.assert_close(logits, hidden.reshape(6, 4) @ weight.T)
    assert torch.equal(flat_target, target.reshape(6))
    assert tokens.tolist() == [10, 11, 12, 40, 41, 42] and out.shape == (6,)
    TokenLoss(inner, "lm-hidden", lambda: weight)(hidden, target)
    assert inner.seen[0].shape == (6, 4) and inner.seen[3] is weight and inner.seen[2] is None


def test_the_head_is_trained_once_through_the_model() -> None:
    model = MODELS.get("gpt").build({"layers": 1, "heads": 1, "width": 8}, in_shape=(4,),
                                    out_dim=11)
    loss = TokenLoss(LOSSES.get("cce").build({}), "lm-hidden", lambda: model.head.weight)
    cfg = TrainConfig.from_spec({"epochs": 1, "optimizer": "adamw", "lr": 0.1})
    trainer = Trainer(model, loss, cfg, torch.device("cpu"), 1)
    assert list(loss.parameters()) == []
    ids = torch.randint(0, 11, (50,))
    before = model.head.weight.detach().clone()
    trainer.sampler = window_sampler(1)
    trainer.epoch(TokenWindows(ids[:-1], 4), TokenWindows(ids[1:], 4),  # type: ignore[arg-type]
                  torch.Generator().manual_seed(0), 0)
    assert not torch.equal(before, model.head.weight)


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


def test_gpt_is_causal_and_returns_hidden_states() -> None:
    torch.manual_seed(0)
    model = MODELS.get("gpt").build({"layers": 2, "heads": 2, "width": 16}, in_shape=(12,),
                                    out_dim=30).eval()
    x = torch.randint(0, 30, (3, 12))
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 1) % 30
    h, h2 = model(x), model(x2)
    assert h.shape == (3, 12, 16)
    torch.testing.assert_close(h[:, :7], h2[:, :7])
    assert not torch.allclose(h[:, 7:], h2[:, 7:])
    torch.testing.assert_close(model.logits(h), model.head(h))


def test_gpt_rejects_bad_shapes() -> None:
    with pytest.raises(UserError, match="multiple of heads"):
        MODELS.get("gpt").build({"width": 10, "heads": 4}, in_shape=(8,), out_dim=5)


# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------


def test_token_scores_against_direct_formulas() -> None:
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(40, 6, generator=g)
    y = torch.randint(0, 6, (40,), generator=g)
    scores = TokenScores()
    scores.add(z[:25], y[:25])
    scores.add(z[25:], y[25:])
    out = scores.metrics(chars=100, pass_at=(1, 4), bins=10)
    p = z.double().softmax(1)[torch.arange(40), y]
    nll = -p.log().sum().item()
    assert out["ce"] == pytest.approx(nll / 40)
    assert out["bpc"] == pytest.approx(nll / math.log(2) / 100)
    assert out["ppl"] == pytest.approx(math.exp(nll / 40))
    assert out["acc"] == pytest.approx(100 * (z.argmax(1) == y).float().mean().item())
    assert out["pass@1"] == pytest.approx(100 * p.mean().item())
    assert out["pass@4"] == pytest.approx(100 * (1 - (1 - p) ** 4).mean().item())


def test_pass_at_n_is_accurate_for_small_and_certain_probabilities() -> None:
    log_p = torch.tensor([-1e-30, math.log(1e-12), 0.0], dtype=torch.float64)
    out = pass_at_n(log_p, 16)
    assert out[0] == pytest.approx(16e-30, rel=1e-9) or out[0] > 0
    assert out[1] == pytest.approx(16e-12, rel=1e-6) and out[2] == 1.0


def test_distinct_n_and_repetition_by_hand() -> None:
    texts = ["a b a b a b", "c d e"]
    assert distinct_n(texts, 1) == pytest.approx(5 / 9)  # {a, b, c, d, e} of 9 words
    assert distinct_n(texts, 2) == pytest.approx(4 / 7)  # ab, ba, cd, de of 7 bigrams
    assert repetition(["a b a b a b"], 2) == pytest.approx(1 - 2 / 5)
    assert repetition(["a b c d e"], 4) == 0.0 and distinct_n(["a"], 2) == 0.0


def test_eval_blocks_count_characters_of_the_targets(corpus_dir: Path) -> None:
    corpus = load_corpus("tinyshakespeare", "char", dir=str(corpus_dir))
    n, chars = eval_blocks(corpus.val, 16, 0)
    assert n == (len(corpus.val.ids) - 1) // 16 and chars == 16 * n
    assert eval_blocks(corpus.val, 16, 3) == (3, 48)


# ---------------------------------------------------------------------------------------------
# Specs, the grid and end-to-end runs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["shakespeare-char", "shakespeare-bpe", "shakespeare-bpe32k"])
def test_tasks_resolve_at_every_budget(task: str) -> None:
    for budget in BUDGETS:
        spec = resolve_task(task, budget)
        assert spec["family"] == "lm"
        check_spec(spec)


@pytest.mark.parametrize(("override", "message"), [
    ("model.name=mlp", "has no LM head"),
    ("data.tokenizer=word", "unknown data.tokenizer"),
    ("data.block_size=1", "block_size must be >= 2"),
    ("lm.steps_per_epoch=0", "steps_per_epoch must be >= 1"),
    ("eval.pass_at=[0]", "pass_at must be >= 1"),
    ("lm.steps=3", r"unknown key\(s\) lm.steps"),
])
def test_bad_specs_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_spec(resolve_task("shakespeare-char", "smoke", [override]))


def test_loss_all_runs_logits_and_lm_hidden_losses() -> None:
    names = {choice[0] for choice in expand_losses(["all"], "lm")}
    assert {"ce", "ls", "focal", "gce", "cce", "emo", "dco", "la-ce", "aldr"} <= names
    assert not names & {"triplet", "mse", "anyloss"}
    with pytest.raises(UserError, match="consumes lm-hidden"):
        expand_losses(["cce"], "classification")


def test_build_loss_supplies_vocabulary_and_token_counts(corpus_dir: Path) -> None:
    corpus = load_corpus("tinyshakespeare", "char", dir=str(corpus_dir))
    model = MODELS.get("gpt").build({"layers": 1, "heads": 1, "width": 8}, in_shape=(4,),
                                    out_dim=corpus.vocab_size)
    loss = build_loss("la-ce", {}, corpus, 0, model)
    counts = np.bincount(corpus.train.ids[1:], minlength=corpus.vocab_size)
    prior = torch.tensor(counts / counts.sum()).log()
    torch.testing.assert_close(loss.inner.log_prior, prior)
    aldr = build_loss("aldr", {}, corpus, 0, model)
    assert len(aldr.inner.lambdas) == len(corpus.train.ids) - 1


def run_cli(out: Path, corpus: Path, *args: str) -> dict[str, dict]:
    result = runner.invoke(app, ["run", "--task", "shakespeare-char", "--budget", "smoke",
                                 "--seeds", "0", "--device", "cpu", "--out", str(out),
                                 "--set", f"data.dir={corpus}", *args])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    return {r["config"]["loss"]: r for r in records}


def test_cli_runs_ce_cce_emo_dco_end_to_end(corpus_dir: Path, tmp_path: Path) -> None:
    records = run_cli(tmp_path / "out", corpus_dir, "--loss", "ce", "--loss", "cce",
                      "--loss", "emo", "--loss", "dco:n=16", "--loss", "ls")
    assert set(records) == {"ce", "cce", "emo", "dco", "ls"}
    for record in records.values():
        assert record["status"] == "ok", record.get("reason")
        m = record["metrics"]
        for key in ("test_bpc", "test_ppl", "test_acc", "test_ece", "test_pass@64",
                    "test_bpc@best_val", "distinct_4", "rep_4", "tokens_per_s", "loss_peak_mb"):
            assert math.isfinite(m[key]), key
        assert m["test_ppl"] == pytest.approx(math.exp(m["test_ce"]))
        assert len(record["curves"]["val_ce"]) == 2
        assert record["info"]["vocab_size"] == record["info"]["vocab_size"] > 10
    # The same seed, the same batches and the same arithmetic up to rounding: CCE trains as CE.
    ce, cce = records["ce"]["metrics"], records["cce"]["metrics"]
    assert cce["test_ce"] == pytest.approx(ce["test_ce"], abs=1e-4)
    assert records["cce"]["info"]["cce_backward_tiles"] > 0
    assert records["dco"]["metrics"]["test_ce"] != ce["test_ce"]


def test_cli_runs_a_bpe_task(corpus_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    result = runner.invoke(app, ["run", "--task", "shakespeare-bpe", "--budget", "smoke",
                                 "--seeds", "0", "--device", "cpu", "--out", str(tmp_path / "o"),
                                 "--loss", "cce", "--set", f"data.dir={corpus_dir}",
                                 "--set", "data.vocab_size=300"])
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "o" / "records").glob("*.json")).read_text())
    assert record["status"] == "ok", record.get("reason")
    assert record["info"]["tokenizer"] == "bpe" and len(record["info"]["bpe_hash"]) == 16
    assert record["metrics"]["test_bpc"] < record["metrics"]["test_ce"] / math.log(2)


def test_lm_logits_losses_match_ce_adapter() -> None:
    """ce through the adapter and cce read the same per-token loss."""
    h = torch.randn(2, 5, 4, dtype=torch.float64)
    w = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randint(0, 7, (2, 5))
    ce = TokenLoss(LOSSES.get("ce").build({}), "logits", lambda: w)(h, y)
    cce = TokenLoss(LOSSES.get("cce").build({}), "lm-hidden", lambda: w)(h, y)
    torch.testing.assert_close(ce, cce)
    torch.testing.assert_close(ce, F.cross_entropy(h.reshape(10, 4) @ w.T, y.reshape(10),
                                                   reduction="none"))


@pytest.mark.parametrize(("metric", "higher"), [
    ("test_bpc", False), ("test_ppl@best_val", False), ("test_ce", False), ("rep_4", False),
    ("loss_peak_mb", False), ("test_ece", False), ("distinct_4", True), ("test_pass@16", True),
    ("test_acc@best_val", True), ("tokens_per_s", True)])
def test_reports_rank_lm_metrics_the_right_way(metric: str, higher: bool) -> None:
    from lossbench.report.stats import higher_is_better

    assert higher_is_better(metric) is higher


def test_lm_runs_tune_on_validation_ce_lower_is_better() -> None:
    crit = criterion_for("lm", None)
    assert crit.metric == "best_val_ce" and crit.higher_is_better is False


def test_a_reducer_weights_tokens(corpus_dir: Path) -> None:
    """Issue 18's per-token reweighting: a reducer on an lm loss weighs the batch's tokens."""
    corpus = load_corpus("tinyshakespeare", "char", dir=str(corpus_dir))
    model = MODELS.get("gpt").build({"layers": 1, "heads": 1, "width": 8}, in_shape=(4,),
                                    out_dim=corpus.vocab_size)
    for name in ("ce", "cce"):
        plain = build_loss(name, {}, corpus, 0, model)
        half = build_loss(name, {"reduce": "small-loss", "reduce.rate": "0.5",
                                 "reduce.warmup": "0"}, corpus, 0, model)
        hidden, target = torch.randn(2, 4, 8), torch.randint(0, corpus.vocab_size, (2, 4))
        per_token, kept = plain(hidden, target), half(hidden, target)
        assert kept.shape == per_token.shape == (8,)
        assert torch.count_nonzero(kept) == 4  # the 4 smallest token losses, doubled
        small = per_token.topk(4, largest=False).indices
        torch.testing.assert_close(kept[small], 2 * per_token[small])
