"""Bring your own loss and task: plug-in losses by module or file path and through entry points,
task files from outside the package, the run key of edited code, worker processes, the Python
API, and the example loss in examples/my_loss.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import lossbench
from lossbench import plugins
from lossbench.cli import app
from lossbench.engine.grid import expand, run_key
from lossbench.engine.store import Store
from lossbench.errors import UserError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_loss.py"
TINY = ["--task", "digits-noisy", "--budget", "smoke", "--device", "cpu", "--seeds", "0",
        "--set", "train.epochs=1"]

CE_COPY = '''
import torch.nn.functional as F
from torch import nn


class MyCE(nn.Module):
    """Cross-entropy, written by a user: same numbers as the built-in ce."""

    consumes = "logits"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, output, target, *, index=None):
        return F.cross_entropy(output * self.scale, target.long(), reduction="none")
'''

BAD = '''
from typing import Literal

import torch
from torch import nn


class NoConsumes(nn.Module):
    pass


class BadConsumes(nn.Module):
    consumes = "logit"


class Required(nn.Module):
    consumes = "logits"

    def __init__(self, alpha):
        super().__init__()


class ListParam(nn.Module):
    consumes = "logits"

    def __init__(self, alpha=[1, 2]):
        super().__init__()


class BadHint(nn.Module):
    consumes = "logits"

    def __init__(self, alpha: "Undefined" = 1):  # noqa: F821
        super().__init__()


class Boom(nn.Module):
    consumes = "logits"

    def __init__(self, k: int = 0):
        super().__init__()
        1 / k


class Ranged(nn.Module):
    consumes = "logits"

    def __init__(self, k: int = 1):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")


class NotModule:
    consumes = "logits"

    def __init__(self, k: int = 1):
        pass


class Ok(nn.Module):
    consumes = "logits"

    def __init__(self, k: int = 1, mode: Literal["a", "b"] = "a"):
        super().__init__()


class Embed(nn.Module):
    consumes = "embeddings"


INSTANCE = Ok()
'''


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def metrics(out: Path) -> dict[tuple[str, int], dict[str, float]]:
    return {(r["config"]["loss"], r["config"]["seed"]): r["metrics"]
            for r in Store(out).records()}


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user package on sys.path (as after `pip install -e` or PYTHONPATH): its name is unique
    to the test, since Python keeps imported modules for the session."""
    name = f"userlosses_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / "pkgs" / name).mkdir(parents=True)
    (tmp_path / "pkgs" / name / "__init__.py").write_text("")
    (tmp_path / "pkgs" / name / "ce_copy.py").write_text(CE_COPY)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    return f"{name}.ce_copy:MyCE"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution (a dist-info folder on sys.path) declaring a loss and a task in
    the lossbench.losses / lossbench.tasks entry-point groups, plus a broken entry of each."""
    site = tmp_path / "site"
    module = f"lbdemo_{abs(hash(tmp_path)) % 10**8}"
    (site / f"{module}.dist-info").mkdir(parents=True)
    (site / f"{module}.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (site / f"{module}.dist-info" / "entry_points.txt").write_text(
        f"[lossbench.losses]\ndemo-ce = {module}:MyCE\nbroken-ep = no_such_module_xyz:A\n"
        f"ce = {module}:MyCE\n\n"
        f"[lossbench.tasks]\ndemo-task = {module}:TASK\nbroken-task = {module}:NOT_A_PATH\n")
    (site / f"{module}.py").write_text(
        CE_COPY + "\nfrom pathlib import Path\nTASK = Path(__file__).with_name('demo.toml')\n"
        "NOT_A_PATH = 3\n")
    shutil.copy(REPO / "tasks" / "digits-noisy.toml", site / "demo.toml")
    monkeypatch.syspath_prepend(str(site))
    return site


# --------------------------------------------------------------------------------------------
# The spec grammar


@pytest.mark.parametrize(("text", "expected"), [
    ("ce", ("ce", {})),
    ("gce:q=0.7", ("gce", {"q": "0.7"})),
    ("ldr:lambda=1, margin=0.2", ("ldr", {"lambda": "1", "margin": "0.2"})),
    ("pkg.mod:Cls", ("pkg.mod:Cls", {})),
    ("pkg.mod:Cls:k=1,j=x", ("pkg.mod:Cls", {"k": "1", "j": "x"})),
    ("my_module:MyLoss:k=v", ("my_module:MyLoss", {"k": "v"})),
    ("my_module:MyLoss", ("my_module:MyLoss", {})),
    ("./dir/my_loss.py:MyLoss:k=v", ("dir/my_loss.py:MyLoss", {"k": "v"})),
    ("dir/../my_loss.py:MyLoss:", ("my_loss.py:MyLoss", {})),
    ("/abs/path/x.py:Outer.Inner", ("/abs/path/x.py:Outer.Inner", {})),
    ("pkg.mod:make_loss:s=a:b", ("pkg.mod:make_loss", {"s": "a:b"})),
])
def test_loss_spec_grammar(text: str, expected: tuple[str, dict[str, str]]) -> None:
    assert plugins.parse_loss_spec(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty loss spec"),
    ("gce:q", "bad parameter 'q' in 'gce:q'; expected key=value"),
    ("focal:Focal", "must be given as a file: ./focal.py:Focal"),
    ("x.py", "a file plug-in is path/file.py:Class"),
    ("x.py:", "a file plug-in is path/file.py:Class"),
    ("x.py:k=1", "a file plug-in is path/file.py:Class"),
    ("pkg.mod", "a plug-in is module:Class"),
    ("pkg.mod:k=1", "a plug-in is module:Class"),
    ("dir/mod:Cls", "a plug-in is module:Class"),
    ("pkg.mod:Cls:k=1,k=2", "given twice"),
])
def test_bad_loss_specs(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        plugins.parse_loss_spec(text)


def test_run_help_documents_the_grammar() -> None:
    code, text = invoke("run", "--help")
    assert code == 0
    flat = " ".join(text.replace("│", " ").split())
    assert "pkg.module:Class[:k=v,...]" in flat and "path/file.py:Class[:k=v,...]." in flat
    assert "$LOSSBENCH_TASKS" in flat and "path/to/task.toml" in flat


# --------------------------------------------------------------------------------------------
# Plug-in losses in runs


def test_dotted_module_loss_trains_like_the_builtin_it_copies(
    tmp_path: Path, user_module: str
) -> None:
    out = tmp_path / "out"
    code, text = invoke("run", "--loss", "ce", "--loss", user_module, *TINY, "--out", str(out))
    assert code == 0, text
    found = metrics(out)
    assert found[(user_module, 0)] == found[("ce", 0)]  # the user's code is what trained
    record = next(r for r in Store(out).records() if r["config"]["loss"] == user_module)
    source = record["config"]["loss_source"]
    file = Path(source["file"])
    assert file.name == "ce_copy.py" and source["target"] == user_module
    assert source["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    code, text = invoke("run", "--loss", f"{user_module}:scale=2", *TINY, "--out", str(out))
    assert code == 0, text
    params = {r["config"]["loss_params"]["scale"] for r in Store(out).records()
              if r["config"]["loss"] == user_module}
    assert params == {1.0, 2.0}


def test_example_loss_file_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """The README's example command, at the smoke budget, from the repository root."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    code, text = invoke("run", "--loss", "ce", "--loss", "examples/my_loss.py:TemperedCE:t1=0.8",
                        "--task", "digits-noisy", "--budget", "smoke", "--seeds", "0",
                        "--device", "cpu", "--out", str(out))
    assert code == 0, text
    assert "examples/my_loss.py:TemperedCE" in text
    records = {r["config"]["loss"]: r for r in Store(out).records()}
    mine = records["examples/my_loss.py:TemperedCE"]
    assert mine["status"] == "ok" and mine["config"]["loss_params"] == {"t1": 0.8}
    assert mine["config"]["loss_source"]["target"] == f"{EXAMPLE}:TemperedCE"
    assert mine["metrics"] != records["ce"]["metrics"]
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs["loss"]) == {"ce", "examples/my_loss.py:TemperedCE"}
    code, text = invoke("leaderboard", str(out), "--out", "-")
    assert code == 0 and "examples/my_loss.py:TemperedCE" in text


def test_entry_point_loss_and_task(tmp_path: Path, installed: Path) -> None:
    code, text = invoke("list", "losses")
    assert code == 0 and "demo-ce" in text
    assert "broken-ep" in text and "cannot import module" in text  # listed, not fatal
    assert "hidden" in text  # an entry point named `ce` loses to the built-in of that name
    code, text = invoke("list", "tasks")
    assert code == 0 and "demo-task" in text and "broken-task" in text
    out = tmp_path / "out"
    code, text = invoke("run", "--loss", "ce", "--loss", "demo-ce:scale=1", "--task",
                        "demo-task", "--budget", "smoke", "--device", "cpu", "--seeds", "0",
                        "--set", "train.epochs=1", "--out", str(out))
    assert code == 0, text
    found = metrics(out)
    assert found[("demo-ce", 0)] == found[("ce", 0)]
    record = Store(out).records()[0]
    assert record["config"]["task"] == "demo-task"
    assert record["config"]["task_file"] == str(installed / "demo.toml")
    demo = next(r for r in Store(out).records() if r["config"]["loss"] == "demo-ce")
    assert demo["config"]["loss_source"]["spec"].endswith(":MyCE")


def test_workers_load_plugins_by_reference(tmp_path: Path, user_module: str, installed: Path
                                           ) -> None:
    """A spawn process pool imports the module, the file and the entry point itself: the same
    numbers as in-process, under the same keys."""
    grid = ["--loss", user_module, "--loss", "demo-ce", "--loss",
            f"{EXAMPLE}:TemperedCE:t1=0.5", *TINY]
    single, pool = tmp_path / "single", tmp_path / "pool"
    code, text = invoke("run", *grid, "--workers", "1", "--out", str(single))
    assert code == 0, text
    code, text = invoke("run", *grid, "--workers", "2", "--out", str(pool))
    assert code == 0, text
    assert "2 workers" in text
    a = {r["run_key"]: r["metrics"] for r in Store(single).records()}
    b = {r["run_key"]: r["metrics"] for r in Store(pool).records()}
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6)
    assert {r["status"] for r in Store(pool).records()} == {"ok"}


def test_a_worker_refuses_code_edited_after_planning(tmp_path: Path) -> None:
    file = tmp_path / "mine.py"
    file.write_text(CE_COPY)
    cfg = expand([f"{file}:MyCE"], ["digits-noisy"], [0], "smoke")[0]
    plugins.register_sources([cfg])  # unchanged: loads
    file.write_text(CE_COPY + "\n# edited\n")
    with pytest.raises(UserError, match="changed since the grid was planned"):
        plugins.register_sources([cfg])


# --------------------------------------------------------------------------------------------
# Run keys


def test_source_hash_is_in_the_key_and_builtin_keys_are_unchanged(tmp_path: Path) -> None:
    file = tmp_path / "mine.py"
    file.write_text(CE_COPY)

    def config(spec: str):  # type: ignore[no-untyped-def]
        return expand([spec], ["digits-noisy"], [0], "smoke")[0]

    first = config(f"{file}:MyCE")
    file.write_text(CE_COPY + "\n# a comment is an edit too\n")
    edited = config(f"{file}:MyCE")
    assert edited.key != first.key
    assert edited.loss_source["sha256"] != first.loss_source["sha256"]  # type: ignore[index]
    file.write_text(CE_COPY)
    assert config(f"{file}:MyCE").key == first.key
    moved = tmp_path / "elsewhere" / "mine.py"
    moved.parent.mkdir()
    shutil.copy(file, moved)
    # Where the file lies is recorded, not keyed; its name as given is (it is the loss name).
    assert config(f"{moved}:MyCE").loss_source["file"] == str(moved)  # type: ignore[index]

    builtin = config("ce")
    optional = ("loss_source", "task_file", "teacher")  # fields that exist only where set
    assert not set(optional) & set(builtin.as_dict())
    before = {k: v for k, v in asdict(builtin).items() if k not in optional}
    assert builtin.key == run_key(before)


# --------------------------------------------------------------------------------------------
# Tasks from outside the package


def test_task_file_by_path(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        text = (REPO / "tasks" / "digits-noisy.toml").read_text()
        (tmp_path / folder / "mytask.toml").write_text(text.replace("rate = 0.4", "rate = 0.2"))
    a = expand(["ce"], [str(tmp_path / "a" / "mytask.toml")], [0], "smoke")[0]
    b = expand(["ce"], [str(tmp_path / "b" / "mytask.toml")], [0], "smoke")[0]
    assert a.task == "mytask" and a.spec["noise"]["rate"] == 0.2
    assert a.task_file == str(tmp_path / "a" / "mytask.toml")
    assert a.key == b.key  # same content: the path is recorded, not keyed
    builtin = expand(["ce"], [str(REPO / "tasks" / "digits-noisy.toml")], [0], "smoke")[0]
    assert builtin.task_file is None
    assert builtin.key == expand(["ce"], ["digits-noisy"], [0], "smoke")[0].key

    out = tmp_path / "out"
    code, text = invoke("run", "--loss", "ce", "--task", str(tmp_path / "a" / "mytask.toml"),
                        "--budget", "smoke", "--device", "cpu", "--seeds", "0", "--set",
                        "train.epochs=1", "--out", str(out))
    assert code == 0, text
    record = Store(out).records()[0]
    assert record["config"]["task_file"] == str(tmp_path / "a" / "mytask.toml")
    assert record["info"]["noise"]["requested_rate"] == 0.2


@pytest.mark.parametrize(("task", "message"), [
    ("nope.toml", "no task file 'nope.toml'"),
    ("dir/nope", "does not end in .toml"),
])
def test_bad_task_paths(tmp_path: Path, task: str, message: str) -> None:
    code, text = invoke("run", "--loss", "ce", "--task", task, "--budget", "smoke",
                        "--out", str(tmp_path))
    assert code == 2 and message in text and len(text.strip().splitlines()) == 1


def test_lossbench_tasks_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
    shutil.copy(REPO / "tasks" / "digits-noisy.toml", one / "envtask.toml")
    (two / "digits-noisy.toml").write_text("family = 'classification'\n")  # cannot shadow
    monkeypatch.setenv("LOSSBENCH_TASKS", os.pathsep.join([str(one), str(two)]))
    code, text = invoke("list", "tasks")
    assert code == 0 and "envtask" in text
    cfg = expand(["ce"], ["envtask"], [0], "smoke")[0]
    assert cfg.task == "envtask" and cfg.task_file == str((one / "envtask.toml").resolve())
    assert expand(["ce"], ["digits-noisy"], [0], "smoke")[0].task_file is None  # built-in wins

    monkeypatch.setenv("LOSSBENCH_TASKS", str(two))  # a change within the process counts
    with pytest.raises(UserError, match="unknown task 'envtask'"):
        expand(["ce"], ["envtask"], [0], "smoke")
    monkeypatch.setenv("LOSSBENCH_TASKS", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="names missing folder"):
        expand(["ce"], ["envtask"], [0], "smoke")


# --------------------------------------------------------------------------------------------
# A bad plug-in is one line


BAD_PLUGINS = [
    ("bad_syntax.py:A", "importing", "raised SyntaxError"),
    ("bad_import.py:A", "importing", "raised ModuleNotFoundError: No module named"),
    ("missing.py:A", "cannot read", "No such file"),
    ("no_such_module_xyz:A", "cannot import module 'no_such_module_xyz'", "PYTHONPATH"),
    ("plugs.py:Nope", "has no 'Nope'; it defines:", "NoConsumes"),
    ("plugs.py:NoConsumes", "declares no consumes kind", "consumes = \"logits\""),
    ("plugs.py:BadConsumes", "consumes = 'logit' is not a kind", "accepted: logits"),
    ("plugs.py:Required", "argument 'alpha' has no default", "give it a default"),
    ("plugs.py:ListParam", "parameter 'alpha' has type list", "int, float, bool, str"),
    ("plugs.py:BadHint", "its signature cannot be read", "NameError"),
    ("plugs.py:Boom", "building it with k=0 raised", "ZeroDivisionError"),
    ("plugs.py:Ranged:k=0", "plugs.py:Ranged:", "k must be >= 1, got 0"),
    ("plugs.py:NotModule", "built a NotModule", "not a torch.nn.Module"),
    ("plugs.py:INSTANCE", "is a Ok object", "not a class or factory"),
    ("plugs.py:Ok:z=1", "plugs.py:Ok: unknown parameter 'z'", "accepted: k, mode"),
    ("plugs.py:Ok:mode=c", "parameter 'mode' got 'c'", "accepted: a, b"),
    ("plugs.py:Embed", "consumes embeddings but a classification task", "logits"),
]


@pytest.mark.parametrize(("spec", "first", "second"), BAD_PLUGINS)
def test_a_bad_plugin_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str,
                                  first: str, second: str) -> None:
    (tmp_path / "bad_syntax.py").write_text("def f(:\n")
    (tmp_path / "bad_import.py").write_text("import no_such_module_xyz\n")
    (tmp_path / "plugs.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored: the cwd fallback may add one
    code, text = invoke("run", "--loss", spec, *TINY, "--out", str(tmp_path / "out"))
    assert code == 2, text
    assert first in text and second in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "records").exists()


def test_bad_entry_points_are_one_line(tmp_path: Path, installed: Path) -> None:
    code, text = invoke("run", "--loss", "broken-ep", *TINY, "--out", str(tmp_path))
    assert code == 2 and "entry point 'broken-ep = no_such_module_xyz:A'" in text
    assert len(text.strip().splitlines()) == 1
    code, text = invoke("run", "--loss", "ce", "--task", "broken-task", "--budget", "smoke",
                        "--out", str(tmp_path))
    assert code == 2 and "task entry point 'broken-task" in text and "it is a int" in text


def test_a_module_in_the_current_folder_is_found(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The `lossbench` script does not put the current folder on sys.path; `python -m` does."""
    name = f"cwdloss_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(CE_COPY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    entry, source = plugins.lookup(f"{name}:MyCE")
    assert entry.tags["consumes"] == "logits" and source is not None
    assert source["file"] == str(tmp_path / f"{name}.py")


def test_an_edited_plugin_is_reloaded_in_the_same_process(
    tmp_path: Path, user_module: str
) -> None:
    """A notebook edits its loss and runs again: the new code, under a new key."""
    file = tmp_path / "mine.py"
    file.write_text(CE_COPY)
    entry, source = plugins.lookup(f"{file}:MyCE")
    file.write_text(CE_COPY.replace("scale: float = 1.0", "scale: float = 3.0"))
    entry2, source2 = plugins.lookup(f"{file}:MyCE")
    assert entry.params[0].default == 1.0 and entry2.params[0].default == 3.0
    assert source != source2

    entry, source = plugins.lookup(user_module)
    module_file = Path(source["file"])  # type: ignore[index]
    module_file.write_text(CE_COPY.replace("scale: float = 1.0", "scale: float = 5.0"))
    entry2, _ = plugins.lookup(user_module)
    assert entry2.params[0].default == 5.0


# --------------------------------------------------------------------------------------------
# The Python API


def test_python_api_gives_the_cli_numbers_and_resumes(tmp_path: Path) -> None:
    losses = ["ce", f"{EXAMPLE}:TemperedCE:t1=0.5"]
    cli, api = tmp_path / "cli", tmp_path / "api"
    code, text = invoke("run", "--loss", losses[0], "--loss", losses[1], *TINY, "--out",
                        str(cli))
    assert code == 0, text
    table = lossbench.run(losses=losses, tasks=["digits-noisy"], seeds=[0], budget="smoke",
                          overrides={"train.epochs": 1}, out=api, device="cpu")
    from_cli = pd.read_parquet(cli / "runs.parquet")
    columns = ["run_key", "loss", "loss_params", "seed", "metric", "value"]
    order = ["run_key", "metric"]
    assert len(table) == len(from_cli) > 0
    pd.testing.assert_frame_equal(
        table[columns].sort_values(order).reset_index(drop=True),
        from_cli[columns].sort_values(order).reset_index(drop=True))

    before = {p: p.stat().st_mtime_ns for p in (cli / "records").glob("*.json")}
    again = lossbench.run(losses=losses, tasks="digits-noisy", seeds="0", budget="smoke",
                          overrides=["train.epochs=1"], out=cli, device="cpu")
    assert {p: p.stat().st_mtime_ns for p in (cli / "records").glob("*.json")} == before
    assert sorted(again["value"].dropna()) == sorted(from_cli["value"].dropna())
    with pytest.raises(UserError, match="unknown loss 'nope'"):
        lossbench.run(losses=["nope"], tasks="digits-noisy", out=tmp_path / "x")
    with pytest.raises(UserError, match="a loss class is named by where it lives"):
        lossbench.run(losses=[torch.nn.Module], tasks="digits-noisy", out=tmp_path / "x")


def test_import_lossbench_stays_light() -> None:
    code = ("import sys, lossbench; lossbench.run; print(sorted({'torch', 'pandas'} & "
            "set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# The example loss is a checked loss: an independent formula, gradients, the paper's properties


def _tempered_reference(z: torch.Tensor, y: torch.Tensor, t1: float) -> torch.Tensor:
    """Amid et al. 2019 with one-hot labels and t2 = 1, from the definitions: the tempered log
    log_t(x) = (x^(1-t) - 1) / (1-t), and L = sum_k y_k (log_t y_k - log_t p_k)
    - (y_k^(2-t) - p_k^(2-t)) / (2-t); float64, plain powers."""
    p = torch.softmax(z.double(), dim=1)
    onehot = F.one_hot(y, z.shape[1]).double()

    def log_t(x: torch.Tensor) -> torch.Tensor:
        return (x ** (1 - t1) - 1) / (1 - t1)

    terms = onehot * (log_t(onehot.clamp_min(1e-300)) - log_t(p)) - (
        onehot ** (2 - t1) - p ** (2 - t1)) / (2 - t1)
    return terms.sum(1)


@pytest.mark.parametrize("t1", [0.0, 0.3, 0.8, 0.95])
def test_example_loss_matches_the_formula_and_gradients(t1: float) -> None:
    entry, _ = plugins.lookup(f"{EXAMPLE}:TemperedCE")
    loss = entry.build({"t1": t1})
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 7, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (64,), generator=gen)
    torch.testing.assert_close(loss(z, y), _tempered_reference(z, y, t1), rtol=1e-10,
                               atol=1e-12)
    zg = z[:8].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, y[:8]), (zg,))


def test_example_loss_properties() -> None:
    entry, _ = plugins.lookup(f"{EXAMPLE}:TemperedCE")
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(32, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (32,), generator=gen)
    torch.testing.assert_close(entry.build({"t1": 1.0})(z, y), F.cross_entropy(z, y,
                               reduction="none"))
    for t1 in (0.2, 0.8):
        loss = entry.build({"t1": t1})
        far = loss(z * 1e4, y)  # confident logits: wrong ones at the bound, right ones at 0
        assert torch.all(far <= 1 / (1 - t1) + 1e-9) and torch.all(far >= -1e-12)
        right = (z * 1e4).argmax(1) == y
        assert 0 < right.sum() < len(y)
        torch.testing.assert_close(far[~right], torch.full_like(far[~right], 1 / (1 - t1)))
        torch.testing.assert_close(far[right], torch.zeros_like(far[right]))
        assert torch.all(loss(z, y) >= 0)
    with pytest.raises(UserError, match="t1 must be in"):
        entry.build({"t1": 1.5})
