"""A sweep of bad command lines: every one must end in a clean exit (a one-line error, exit 2;
or a gate verdict, exit 1), never a traceback. Used by ``test_bad_inputs.py``; also a script
(``python tests/bad_inputs.py``) that prints the count of tracebacks over the sweep, so the
figure can be compared across versions of the code."""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SMOKE = ["--task", "digits-noisy", "--budget", "smoke", "--device", "cpu", "--seeds", "0"]

BAD_LOSSES = [
    "nope", "", ":", "ce:", "ce:x", "ce:=1", "gce:q=2", "gce:q=abc", "gce:q=nan", "gce:q=inf",
    "gce:q=-1", "gce:qq=1", "gce:q=0.5,q=0.6", "ldr:lambda=0", "ldr:lambda=-1",
    "ldr:lambda=abc", "focal:gamma=-1", "sce:alpha=abc", "all:x=1", "ms", "triplet",
    "mse", "gauss-nll", "aldr:lambda=0", "nce+rce:alpha=-1", "ce:reduction=sum",
    "pkg.mod", "pkg.mod:k=1", "x.py", "x.py:", "missing.py:A", "no_such_module_xyz:A",
    "focal:Focal", "a/b:C", "lossbench.losses:LOSSES", "lossbench.losses.base:Loss",
    "ce:reduce=median", "ce:reduce.rate=0.3", "ce:reduce=small-loss,reduce.rate=2",
    "ce:reduce=small-loss,reduce.speed=1", "ce:reduce=loss-weight,reduce.strategy=cubic",
    "ce:reduce=loss-weight,reduce.r=0", "ce:reduce=mean,reduce=small-loss",
]
BAD_TASKS = ["nope", "", ",", "digits-noisy,nope", "../tasks/digits-noisy", "DIGITS-NOISY",
             "nope.toml", "tasks"]
BAD_PLUGIN_FILE = """
import torch
from torch import nn
class NoConsumes(nn.Module):
    pass
class Required(nn.Module):
    consumes = "logits"
    def __init__(self, alpha):
        super().__init__()
class BadHint(nn.Module):
    consumes = "logits"
    def __init__(self, alpha: "Undefined" = 1):
        super().__init__()
class Boom(nn.Module):
    consumes = "logits"
    def __init__(self, k: int = 0):
        super().__init__()
        1 / k
class NotModule:
    consumes = "logits"
class Embed(nn.Module):
    consumes = "embeddings"
"""
BAD_PLUGINS = ["NoConsumes", "Required", "BadHint", "Boom", "NotModule", "Embed", "Nope",
               "Boom:k=x", "Required:alpha=1"]
BAD_SEEDS = ["a", "5-2", "-1", "1,1", "0-", "-", "1.5", "0,,1", "1e3", "0-x"]
BAD_SETS = [
    "noise.kind=gaussian", "noise.rate=1.5", "noise.rate=-0.1", "noise.rate=abc",
    "noise.rat=0.2", "noize.rate=0.2", "train.epoch=1", "train.epochs=0", "train.epochs=2.5",
    "train.epochs=abc", "train.lr=abc", "train.lr=-1", "train.lr=0", "train.momentum=abc",
    "train.batch_size=1", "train.batch_size=abc", "train.optimizer=adam9",
    "train.schedule=linear", "train.milestones=abc", "train.milestones=[1.5]",
    "train.weight_decay=-1", "train.amp=maybe", "train.warmup_epochs=-1",
    "model.name=resnet9000", "model.hidden=abc", "model.hiden=5", "model.depth=-1",
    "data.source=nope", "data.test_fraction=2", "data.split_seed=abc",
    "split.val_fraction=0", "split.val_fraction=1.5", "split.val_fraction=abc",
    "eval.ece_bins=0", "eval.ece_bins=abc", "=1", "noise", "noise.kind",
    "family=retrieval", "budget.smoke.train.epochs=0", "seeds=abc",
    "calibration.method=nope", "calibration.input_noise=-1", "calibration.copies=abc",
    "calibration.steps=0", "imbalance.profile=nope",
]
BAD_OPTIONS = [
    ["--budget", "huge"], ["--device", "gpu"], ["--device", "cuda:x"], ["--workers", "0"],
    ["--workers", "-1"], ["--workers", "abc"], ["--threads", "0"], ["--threads", "abc"],
    ["--pack", "0"], ["--pack", "abc"], ["--pack", "-2"], ["--executor", "dask"],
    ["--gpus-per-run", "abc"], ["--nope"],
]
OTHER_TASKS = [
    ("digits-retrieval", ["ce:x=1", "ms:alpha=-1", "mse", "triplet:mining=nope"]),
    ("diabetes", ["ce", "pinball:quantiles=abc", "pinball:quantiles=0.5/2", "huber:delta=-1"]),
    ("digits-fewshot", ["ms", "mse", "icnn:k=-1"]),
    ("uci-boston", ["mse:x=1", "bag-level", "bag-interp"]),
    ("uci-boston-bags", ["bag-interp:rho=2", "bag-interp:rho=-1", "bag-level:rho=0.5"]),
    ("fashion-mnist-ssl", ["ms", "ce", "sogclr:gamma=0", "sogclr:temperature=abc",
                           "isogclr:tau_init=5", "isogclr:tau_min=0", "isogclr:beta=2"]),
]
DISTILL = ["--task", "digits-distill", "--budget", "smoke", "--device", "cpu", "--seeds", "0"]
BAD_TEACHER_SETS = ["teacher.loss=nope", "teacher.loss=kd", "teacher.loss=all",
                    "teacher.loss=gce:q=5", "teacher.loss=1", "teacher.model.name=nope",
                    "teacher.model.hidden=abc", "teacher.train.epochs=0",
                    "teacher.train.epoch=1", "teacher.bogus=1", "teacher=3", "teacher.model=3",
                    "train.augment=true"]
BAD_BAG_SETS = ["bags.size=0", "bags.size=abc", "bags.size=2.5", "bags.kind=knn",
                "bags.seed=abc", "bags.k=2"]
BAD_FEWSHOT_SETS = ['eval.inference=tim', 'eval.inference=["kmeans"]',
                    'eval.inference=["tim:iterations=abc"]', 'eval.inference=["paddle:norm=l3"]',
                    'eval.inference=["tim", "tim"]', "eval.query_dirichlet=abc",
                    "eval.query_dirichlet=[-1]", "eval.query_dirichlet=[2, 2]"]


def cases(tmp: Path) -> Iterator[list[str]]:
    """Every bad command line of the sweep; ``tmp`` holds the files some of them need."""
    out = ["--out", str(tmp / "out")]
    for loss in BAD_LOSSES:
        yield ["run", "--loss", loss, *SMOKE, *out]
    for plugin in BAD_PLUGINS:
        yield ["run", "--loss", f"{tmp / 'plugs.py'}:{plugin}", *SMOKE, *out]
    for broken in ("syntax.py", "raises.py"):
        yield ["run", "--loss", f"{tmp / broken}:A", *SMOKE, *out]
    for task in BAD_TASKS:
        yield ["run", "--loss", "ce", "--task", task, "--budget", "smoke", *out]
    yield ["run", "--loss", "ce", "--task", str(tmp / "bad.toml"), "--budget", "smoke", *out]
    for seeds in BAD_SEEDS:
        yield ["run", "--loss", "ce", *SMOKE[:-2], "--seeds", seeds, *out]
    for assignment in BAD_SETS:
        yield ["run", "--loss", "ce", *SMOKE, "--set", assignment, *out]
    for option in BAD_OPTIONS:
        yield ["run", "--loss", "ce", *SMOKE, *option, *out]
    for task, losses in OTHER_TASKS:
        for loss in losses:
            yield ["run", "--loss", loss, "--task", task, "--budget", "smoke", "--seeds", "0",
                   *out]
    for assignment in BAD_BAG_SETS:
        yield ["run", "--loss", "bag-level", "--task", "uci-boston-bags", "--budget", "smoke",
               "--set", assignment, *out]
    for assignment in BAD_FEWSHOT_SETS:
        yield ["run", "--loss", "ce", "--task", "digits-fewshot", "--budget", "smoke",
               "--set", assignment, *out]
    for assignment in BAD_TEACHER_SETS:
        yield ["run", "--loss", "kd", *DISTILL, "--set", assignment, *out]
    yield ["run", "--loss", "kd", *SMOKE, *out]  # a task without a [teacher] table
    for reduce in ("", ":", "median", "small-loss:rate=2", "small-loss:rate", "mean:x=1"):
        yield ["run", "--loss", "ce", "--reduce", reduce, *SMOKE, *out]
    yield ["run", "--loss", "ce:reduce=mean", "--reduce", "small-loss", *SMOKE, *out]
    yield ["run", "--loss", "pld:temperature=0", *DISTILL, *out]
    file_out = tmp / "a-file"
    yield ["run", "--loss", "ce", *SMOKE, "--out", str(file_out)]
    yield ["run", "--loss", "ce", *SMOKE, "--out", "/proc/x"]
    yield ["run", "--task", "digits-noisy"]
    yield ["run", "--loss", "ce"]
    broken = tmp / "broken"
    for command in ("compare", "leaderboard", "plot", "gate", "runs", "aggregate"):
        for folder in (tmp / "nope", tmp / "empty", file_out, broken, tmp / "bad.txt",
                       tmp / "badtables"):
            yield [command, str(folder)]
    for option in (["--metric", "nope"], ["--by", "nope"], ["--baseline", "nope"],
                   ["--format", "xml"], ["--by", ""], ["--metric", ""]):
        yield ["compare", str(tmp / "good"), *option]
    for option in (["--published", str(tmp / "nope.csv")], ["--published", str(file_out)],
                   ["--published", str(tmp / "bad.txt")], ["--published", str(tmp / "base.csv")],
                   ["--rank-agreement", str(tmp / "nope")], ["--tuned"]):
        yield ["compare", str(tmp / "good"), *option]
    for option in (["--out", str(file_out / "x.md")], ["--metric", "nope"], ["--suite", "nope"],
                   ["--set", "noise.rate=0.1"], ["--suite", "ldr-tabular"]):
        yield ["leaderboard", str(tmp / "good"), *option]
    for option in (["--publish", str(file_out)], ["--publish", str(tmp / "good")]):
        yield ["tables", str(tmp / "good"), *option]
    yield ["run", "--suite", "nope", "--budget", "smoke"]
    yield ["run", "--loss", "gce", *SMOKE, "--tune", "--space", "gce.q=abc"]
    yield ["run", "--loss", "gce", *SMOKE, "--space", "gce.q=0.5"]
    for option in (["--baseline", str(tmp / "nope.csv")], ["--baseline", str(file_out)],
                   ["--baseline", str(tmp / "bad.txt")], [],
                   ["--baseline", str(tmp / "base-bad-mean.csv")],
                   ["--baseline", str(tmp / "base-neg-std.csv")],
                   ["--baseline", str(tmp / "base-no-cols.csv")],
                   ["--tolerance", "-1", "--baseline", str(tmp / "base.csv")],
                   ["--metric", "nope", "--baseline", str(tmp / "base.csv")],
                   ["--write-baseline", str(file_out / "x.csv")],
                   ["--write-baseline", str(tmp / "w.csv"), "--metric", "nope"]):
        yield ["gate", str(tmp / "good"), *option]
    for option in (["--method", "nope"], ["--method", ""], ["--out", str(file_out)]):
        yield ["aggregate", str(tmp / "good"), *option]
    for key in ("zzzz", "", "0"):
        yield ["show", key, "--out", str(tmp / "good")]
        yield ["show", key, "--out", str(tmp / "nope")]
        yield ["show", key, "--out", str(broken)]
    for option in (["--task", "nope"], ["--status", "nope"]):
        yield ["runs", str(tmp / "good"), *option]
    yield ["list", "losses", "--family", "nope"]
    yield ["list", "tasks", "--family", "nope"]
    yield ["list", "nope"]
    yield ["nope"]


def prepare(tmp: Path, runner_invoke: object) -> None:
    """Files the sweep needs: a good results folder, broken ones, bad baselines."""
    invoke = runner_invoke  # type: ignore[assignment]
    good = tmp / "good"
    invoke(["run", "--loss", "ce", *SMOKE[:-2], "--seeds", "0,1", "--set", "train.epochs=1",
            "--out", str(good)])  # type: ignore[operator]
    invoke(["gate", str(good), "--write-baseline", str(tmp / "base.csv")])  # type: ignore
    base = (tmp / "base.csv").read_text().splitlines()
    head, row = base[0], base[1].split(",")
    cols = head.split(",")
    bad = list(row)
    bad[cols.index("mean")] = "abc"
    (tmp / "base-bad-mean.csv").write_text("\n".join([head, ",".join(bad)]) + "\n")
    neg = list(row)
    neg[cols.index("std")] = "-1"
    (tmp / "base-neg-std.csv").write_text("\n".join([head, ",".join(neg)]) + "\n")
    (tmp / "base-no-cols.csv").write_text("a,b\n1,2\n")
    (tmp / "a-file").write_text("")
    (tmp / "plugs.py").write_text(BAD_PLUGIN_FILE)
    (tmp / "syntax.py").write_text("def f(:\n")
    (tmp / "raises.py").write_text("raise SystemExit('no')\n")
    (tmp / "bad.toml").write_text("family = 'classification'\n[data\n")
    (tmp / "bad.txt").write_text("not a table")
    (tmp / "empty").mkdir()
    broken = tmp / "broken" / "records"
    broken.mkdir(parents=True)
    (broken / "aaaa.json").write_text("{")
    (broken / "bbbb.json").write_text("[1, 2]")
    (broken / "cccc.json").write_text(json.dumps({"run_key": "cccc"}))
    bad_tables = tmp / "badtables"
    bad_tables.mkdir()
    for name in ("runs.parquet", "runs.csv", "curves.parquet"):
        (bad_tables / name).write_bytes(b"\x00garbage")


def sweep() -> tuple[int, int, list[tuple[list[str], str]]]:
    """(cases, tracebacks, [(args, exception text)]) over the whole sweep, in-process."""
    from typer.testing import CliRunner

    from lossbench.cli import app

    runner = CliRunner()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        prepare(tmp, lambda args: runner.invoke(app, args))
        bad: list[tuple[list[str], str]] = []
        accepted: list[list[str]] = []
        n = 0
        for args in itertools.chain(cases(tmp)):
            n += 1
            result = runner.invoke(app, args)
            crashed = result.exception is not None and not isinstance(result.exception,
                                                                       SystemExit)
            if crashed or "Traceback" in result.output:
                bad.append((args, repr(result.exception)))
            elif result.exit_code == 0:
                accepted.append(args)
    return n, len(bad), bad + [(args, "accepted (exit 0)") for args in accepted]


if __name__ == "__main__":
    total, tracebacks, details = sweep()
    for args, why in details:
        print(" ".join(args), "->", why[:200])
    print(f"{tracebacks} tracebacks in {total} bad command lines")
    sys.exit(0)
