"""Tuning: declared spaces, --space overrides, equal budgets, and selection by validation only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lossbench.engine.grid import RunConfig
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.losses import LOSSES
from lossbench.tuning import (
    criterion_for,
    declared_space,
    equal_budget,
    parse_space_option,
    run_marks,
    select,
    space_for,
    spec_text,
)


def test_declared_spaces_are_the_ldr_codes_grids() -> None:
    assert declared_space(LOSSES.get("gce")) == [{"q": 0.05}, {"q": 0.7}, {"q": 0.95}]
    nce = declared_space(LOSSES.get("nce+rce"))
    assert [(p["alpha"], p["beta"]) for p in nce] == [(0.1, 9.9), (5.0, 5.0), (9.9, 0.1)]
    assert declared_space(LOSSES.get("ce")) == [{}]
    for name in ("ldr", "aldr", "sce", "cs-hinge", "ww-hinge"):
        points = declared_space(LOSSES.get(name))
        assert len(points) == 3
        for point in points:
            LOSSES.get(name).resolve(point)  # every declared value is a valid parameter


def test_space_option_and_overrides() -> None:
    assert parse_space_option("gce.q=0.1,0.5") == ("gce", "q", ["0.1", "0.5"])
    assert parse_space_option("nce+rce.alpha=1,2") == ("nce+rce", "alpha", ["1", "2"])
    for bad in ("gce", "gce.q", "q=0.1", "gce.q=", ".q=1"):
        with pytest.raises(UserError, match="bad --space"):
            parse_space_option(bad)
    gce = LOSSES.get("gce")
    assert space_for(gce, {}, {"q": ["0.1", "0.5"]}) == [{"q": "0.1"}, {"q": "0.5"}]
    assert space_for(gce, {"q": "0.3"}, {}) == [{}]  # fixed by the user: not tuned
    with pytest.raises(UserError, match="unknown parameter 'qq'"):
        space_for(gce, {}, {"qq": ["1"]})
    with pytest.raises(UserError, match="gce"):
        space_for(gce, {}, {"q": ["5"]})  # outside the loss's range
    sce = space_for(LOSSES.get("sce"), {"A": "-9.21"}, {})
    assert len(sce) == 3 and all("A" not in p for p in sce)


def test_equal_budget_subsamples_the_same_way_every_time() -> None:
    points = [{"q": i} for i in range(9)]
    three = equal_budget(points, 3, "gce")
    assert len(three) == 3 and three == equal_budget(points, 3, "gce")
    assert three == sorted(three, key=lambda p: p["q"])
    assert equal_budget(points[:2], 3, "gce") == points[:2]
    assert spec_text("gce", {"q": 0.7}) == "gce:q=0.7" and spec_text("ce", {}) == "ce"


def test_criterion_is_a_validation_metric() -> None:
    assert criterion_for("classification", None).metric == "best_val_top1"
    assert criterion_for("regression", None).higher_is_better is False
    with pytest.raises(UserError, match="test metric"):
        criterion_for("classification", "test_top1")


def _config(loss: str, params: dict, seed: int) -> RunConfig:
    spec = {"task": "t", "budget": "smoke", "train": {"epochs": 1}}
    return RunConfig("t", "classification", "smoke", loss, params, seed, spec)


def _record(cfg: RunConfig, status: str, val: float, test: float) -> dict:
    return {"run_key": cfg.key, "config": {"task": "t"}, "status": status,
            "metrics": {"best_val_top1": val, "test_top1": test}}


def test_selection_reads_validation_only_and_counts_failures_as_worst(tmp_path: Path) -> None:
    store = Store(tmp_path)
    configs = []
    # q=0.1 has the best test accuracy but the worst validation: it must not win.
    table = {0.1: [(50, 99), (52, 99)], 0.5: [(80, 10), (82, 10)], 0.9: [(95, 50), (None, 50)]}
    for q, rows in table.items():
        for seed, (val, test) in enumerate(rows):
            cfg = _config("gce", {"q": q}, seed)
            configs.append(cfg)
            status = "ok" if val is not None else "diverged"
            store.write(_record(cfg, status, val if val is not None else 0.0, test))
    [record] = select(configs, store)
    assert record["chosen_params"] == {"q": 0.5} and record["trials"] == 3
    assert record["points"][2]["mean"] is None  # a diverged seed: the point cannot win
    saved = json.loads((tmp_path / "tuning" / f"{record['id']}.json").read_text())
    assert saved["chosen_keys"] == record["chosen_keys"]
    marks = run_marks(tmp_path)
    assert sorted(marks.values()).count("chosen") == 2 and len(marks) == 6


def _invoke(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from lossbench.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


SMOKE = ["--task", "digits-noisy", "--budget", "smoke", "--device", "cpu", "--seeds", "0,1",
         "--set", "train.epochs=1"]


def test_run_tune_trains_every_point_and_records_the_choice(tmp_path: Path) -> None:
    code, text = _invoke("run", "--loss", "ce", "--loss", "gce", "--tune", *SMOKE,
                         "--space", "gce.q=0.3,0.7", "--out", str(tmp_path))
    assert code == 0, text
    assert "6 runs in the grid" in text and "tuning (validation only)" in text
    [ce, gce] = sorted(json.loads(p.read_text())["loss"] for p in (tmp_path / "tuning").glob(
        "*.json"))
    assert (ce, gce) == ("ce", "gce")
    records = {json.loads(p.read_text())["loss"]: json.loads(p.read_text())
               for p in (tmp_path / "tuning").glob("*.json")}
    assert records["gce"]["trials"] == 2 and len(records["gce"]["chosen_keys"]) == 2
    code, text = _invoke("run", "--loss", "ce", "--loss", "gce", "--tune", *SMOKE,
                         "--space", "gce.q=0.3,0.7", "--out", str(tmp_path))
    assert code == 0 and "6 already finished, 0 to run" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--loss", "gce", "--space", "gce.q=0.1"], "go with --tune"),
    (["--loss", "all", "--tune"], "--tune needs the losses named"),
    (["--loss", "ce", "--tune", "--space", "gce.q=0.1"], "no --loss tunes"),
    (["--loss", "gce", "--tune", "--trials", "0"], "--trials must be >= 1"),
    (["--loss", "gce", "--tune", "--space", "gce.q=7"], "gce"),
    (["--loss", "gce", "--tune", "--tune-metric", "test_top1"], "test metric"),
])
def test_tuning_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    code, text = _invoke("run", *args, *SMOKE, "--out", str(tmp_path))
    assert code == 2 and message in text and len(text.strip().splitlines()) == 1, text


def _suite_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """A suites folder holding tiny.toml (``text``), the only one lossbench searches."""
    from lossbench import suites

    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "tiny.toml").write_text(text)
    monkeypatch.setattr(suites, "suite_dirs", lambda: [folder])
    return folder


def test_run_suite_runs_each_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _suite_folder(
        tmp_path, monkeypatch,
        'losses = ["ce"]\n'
        '[[setting]]\ntask = "digits-noisy"\nlabel = "sym 0.2"\n'
        'set = ["noise.kind=symmetric", "noise.rate=0.2"]\n'
        '[[setting]]\ntask = "digits-noisy"\nlabel = "clean"\n'
        'set = ["noise.kind=none", "noise.rate=0.0"]\n')
    code, text = _invoke("run", "--suite", "tiny", "--budget", "smoke", "--device", "cpu",
                         "--seeds", "0", "--set", "train.epochs=1", "--out",
                         str(tmp_path / "out"))
    assert code == 0 and "2 runs in the grid" in text, text
    rates = sorted(json.loads(p.read_text())["config"]["spec"]["noise"]["rate"]
                   for p in (tmp_path / "out" / "records").glob("*.json"))
    assert rates == [0.0, 0.2]
    code, text = _invoke("list", "suites")
    assert code == 0 and "tiny" in text
    code, text = _invoke("run", "--budget", "smoke", "--out", str(tmp_path / "o2"))
    assert code == 2 and "no --task or --suite given" in text


def test_suite_leaderboard_of_tuned_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _suite_folder(
        tmp_path, monkeypatch,
        'description = "two noise rates"\nlosses = ["ce", "gce"]\n'
        '[[setting]]\ntask = "digits-noisy"\nlabel = "sym 0.6"\n'
        'set = ["noise.kind=symmetric", "noise.rate=0.6"]\n'
        '[[setting]]\ntask = "digits-noisy"\nlabel = "sym 0.2"\n'
        'set = ["noise.kind=symmetric", "noise.rate=0.2"]\n')
    out = tmp_path / "out"
    grid = ["--budget", "smoke", "--device", "cpu", "--seeds", "0,1", "--set",
            "train.epochs=1", "--out", str(out)]
    code, text = _invoke("run", "--suite", "tiny", "--tune", "--space", "gce.q=0.3,0.7",
                         "--set", "noise.rate=0.6", *grid)
    assert code == 0, text  # --set applies after the settings: both become rate 0.6 (one setting)
    code, text = _invoke("run", "--suite", "tiny", "--tune", "--space", "gce.q=0.3,0.7", *grid)
    assert code == 0, text
    with (folder / "tiny.toml").open("a") as suite_file:  # a setting added after the runs
        suite_file.write('[[setting]]\ntask = "digits-noisy"\nlabel = "not run"\n'
                         'set = ["noise.kind=symmetric", "noise.rate=0.4"]\n')
    md = tmp_path / "tiny.md"
    code, text = _invoke("leaderboard", str(out), "--suite", "tiny", "--tuned", "--out", str(md))
    assert code == 2 and "pass the same --set overrides" in text  # made with train.epochs=1
    code, text = _invoke("leaderboard", str(out), "--suite", "tiny", "--tuned", "--out", str(md),
                         "--set", "train.epochs=1")
    assert code == 0, text
    table = md.read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header.index("sym 0.6") < header.index("sym 0.2")  # the suite's order
    assert "Settings without runs: not run" in table
    rows = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ce") or line.startswith("| gce")]
    assert rows == ["ce", "gce"] or rows == ["gce", "ce"]  # one row per loss, tuned
    code, text = _invoke("compare", str(out), "--tuned", "--format", "csv")
    assert code == 0 and "gce:" not in text
    code, text = _invoke("leaderboard", str(out), "--set", "noise.rate=0.1")
    assert code == 2 and "--set goes with --suite" in text
