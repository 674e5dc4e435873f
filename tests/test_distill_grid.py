"""Teachers in the grid: trained once as a first stage, cached with their training-set logits,
reused by every student naming the same teacher config, keyed by that config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lossbench
from lossbench.engine.arrays import read_arrays
from lossbench.engine.grid import expand, teacher_config, teacher_configs
from lossbench.engine.session import plan
from lossbench.engine.store import Store
from lossbench.errors import UserError

TASK = "digits-distill"


def _plan(out: Path, losses: list[str], overrides: list[str] | None = None, **kw: object):
    return plan(losses, [TASK], [0], "smoke", overrides or [], out=out, device="cpu",
                workers="1", **kw)


def test_teacher_trains_once_first_and_is_reused(tmp_path: Path) -> None:
    out = tmp_path / "res"
    grid = _plan(out, ["kd", "dkd", "ce"])
    assert len(grid.teachers) == 1 and len(grid.todo) == 4
    assert grid.stages()[0] == grid.teachers  # the teacher's stage comes before any student
    lossbench.run(["kd", "dkd", "ce"], TASK, seeds=[0], budget="smoke", out=out, device="cpu")
    store = Store(out)
    records = {r["run_key"]: r for r in store.records()}
    teacher = grid.teachers[0]
    assert len(records) == 4 and teacher.key in records
    assert records[teacher.key]["config"]["spec"]["eval"]["keep_train_logits"] is True
    logits = read_arrays(store.path(teacher.key).with_suffix(".npz"))["train_logits"]
    assert logits.shape == (records[teacher.key]["info"]["num_train"], 10)
    students = [r for r in records.values() if r["config"]["loss"] in ("kd", "dkd")]
    for student in students:
        assert student["status"] == "ok"
        assert student["config"]["teacher"]["key"] == teacher.key
        assert student["info"]["teacher"] == teacher.key
        assert (student["metrics"]["teacher_test_top1"]
                == records[teacher.key]["metrics"]["test_top1"])
    ce = next(r for r in records.values() if r["config"]["loss"] == "ce"
              and r["run_key"] != teacher.key)
    assert "teacher" not in ce["config"] and "teacher_test_top1" not in ce["metrics"]
    # the same spec for every student loss: one setting in the tables
    assert len({str(r["config"]["spec"]) for r in [ce, *students]}) == 1
    again = _plan(out, ["kd", "dkd", "pld"])
    assert [c.loss for c in again.todo] == ["pld"]  # the cached teacher is reused
    store.path(teacher.key).with_suffix(".npz").unlink()
    assert [c.key for c in _plan(out, ["pld"]).todo] == [teacher.key, *(c.key for c in
                                                                         again.todo)]


def test_other_losses_never_train_the_teacher(tmp_path: Path) -> None:
    grid = _plan(tmp_path, ["ce", "gce"])
    assert grid.teachers == [] and all(c.teacher is None for c in grid.todo)


def test_teacher_key_follows_the_teacher_config_and_the_student_key_follows_it() -> None:
    base = expand(["kd"], [TASK], [0], "smoke")[0]
    wider = expand(["kd"], [TASK], [0], "smoke", ["teacher.model.hidden=64"])[0]
    longer = expand(["kd"], [TASK], [0], "smoke", ["teacher.train.epochs=2"])[0]
    other_seed = expand(["kd"], [TASK], [1], "smoke")[0]
    teachers = [teacher_config(c).key for c in (base, wider, longer, other_seed)]
    assert len(set(teachers)) == 4
    assert len({c.key for c in (base, wider, longer, other_seed)}) == 4
    assert base.teacher == {"key": teachers[0]}
    # two students of one teacher config share one teacher run
    both = expand(["kd", "pld:temperature=2"], [TASK], [0], "smoke")
    assert len(teacher_configs(both)) == 1
    # the teacher is an ordinary run: its own spec, the student's data, split and seed
    teacher = teacher_config(base)
    assert teacher.loss == "ce" and teacher.seed == 0 and "teacher" not in teacher.spec
    assert teacher.task == teacher.spec["task"] == f"{TASK}.teacher"  # its own setting
    assert teacher.spec["model"]["hidden"] == 512 and base.spec["model"]["hidden"] == 32
    assert teacher.spec["data"] == base.spec["data"]
    assert teacher.spec["split"] == base.spec["split"]


def test_default_teacher_is_the_student_model_widened(tmp_path: Path) -> None:
    task = tmp_path / "t.toml"
    text = (Path(lossbench.__file__).parent.parent / "tasks" / f"{TASK}.toml").read_text()
    task.write_text(text.replace("[teacher.model]\nhidden = 512\n", ""))
    student = expand(["kd"], [str(task)], [0], "smoke")[0]
    assert student.spec["teacher"]["model"] == {"name": "mlp", "hidden": 64, "depth": 2}
    assert teacher_config(student).spec["model"]["hidden"] == 64


def test_bad_teacher_config_is_one_line(tmp_path: Path) -> None:
    for assignment, words in (("teacher.loss=kd", "distils a teacher itself"),
                              ("teacher.loss=nope", "unknown loss 'nope'"),
                              ("teacher.model.name=nope", "unknown model 'nope'"),
                              ("teacher.bogus=1", "teacher.bogus")):
        with pytest.raises(UserError, match=words) as err:
            expand(["kd"], [TASK], [0], "smoke", [assignment])
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no \\[teacher\\] table"):
        expand(["kd"], ["digits"], [0], "smoke")


def test_packed_students_match_single_runs(tmp_path: Path) -> None:
    runs = {}
    for pack in (1, 2):
        table = lossbench.run(["kd", "pld"], TASK, seeds=[0], budget="smoke",
                              out=tmp_path / str(pack), device="cpu", pack=pack)
        top1 = table[table["metric"] == "test_top1"].sort_values("loss")
        runs[pack] = top1["value"].to_numpy()
    np.testing.assert_array_equal(runs[1], runs[2])


def test_workers_train_the_teacher_once_before_students(tmp_path: Path) -> None:
    out = tmp_path / "res"
    lossbench.run(["kd", "dkd"], TASK, seeds=[0], budget="smoke", out=out, device="cpu",
                  workers=2)
    records = Store(out).records()
    assert len(records) == 3 and {r["status"] for r in records} == {"ok"}
