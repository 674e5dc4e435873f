"""Teachers for distillation losses: the ``[teacher]`` table of a classification task.

A teacher is an ordinary run. Its spec is the student's task spec (data, split, noise, eval)
with the teacher's model, the teacher's ``[train]`` overrides and ``eval.keep_train_logits =
true``, so after training it stores its logits on the (un-augmented) training inputs beside its
record (``records/<key>.npz``, ``train_logits``). Its run key is the ordinary key of that spec,
the teacher's loss and the student's seed, so one teacher serves every student run naming the
same teacher config, and a ``--set teacher.*`` override makes a different teacher. A
distillation run carries the teacher's key in its own key (``RunConfig.teacher``); the session
trains missing teachers as a first stage, before any student (``lossbench.engine.session``).
Other losses on the same task never need the teacher, and it is not trained for them.

``[teacher]`` keys (all optional)::

    loss = "ce"            # a loss spec as on the command line (not a distillation loss)
    [teacher.model]        # with a name other than the task's model: the teacher's model;
    name = "strided-cnn"   # without one (or the same name): overrides of the task's model.
    width = 32             # Absent: the task's model with width / hidden doubled.
    [teacher.train]        # overrides of the task's [train] table (epochs, lr, augment, ...)
    epochs = 5
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossbench.errors import UserError, require
from lossbench.spec import deep_merge, typed_table

TRAIN_LOGITS = "train_logits"
"""The array a teacher run keeps: its logits on the training inputs [num_train, K]."""
TEACHER_SUFFIX = ".teacher"
"""A teacher run's task name is its student task's plus this, so reports show the teacher as a
setting of its own, never as more seeds of the students' CE run."""
WIDENED = ("width", "hidden")
"""Model options doubled to make the default teacher: a wider copy of the task's model."""


@dataclass(frozen=True)
class TeacherTable:
    """``[teacher]``: the teacher's loss, model and training overrides."""

    loss: str = "ce"
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def read_teacher(spec: Mapping[str, Any]) -> TeacherTable:
    """The ``[teacher]`` table, typed: unknown keys and wrong types are one-line errors."""
    return typed_table(TeacherTable, spec.get("teacher", {}), "teacher")


def teacher_model(spec: Mapping[str, Any], table: TeacherTable) -> dict[str, Any]:
    """The teacher's full ``[model]`` table (see the module doc)."""
    student = dict(spec["model"])
    if table.model.get("name", student.get("name")) != student.get("name"):
        return dict(table.model)
    if table.model:
        return deep_merge(student, table.model)
    wider = {k: 2 * v for k, v in student.items()
             if k in WIDENED and isinstance(v, int) and not isinstance(v, bool)}
    require(bool(wider), f"teacher.model is needed: task model '{student.get('name')}' has no "
                         f"{' or '.join(WIDENED)} to widen into a default teacher")
    return student | wider


def resolved_teacher(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[teacher]`` table with its defaults filled in: what a student's spec stores (and
    so hashes) and what its teacher's spec is built from."""
    table = read_teacher(spec)
    return {"loss": table.loss, "model": teacher_model(spec, table), "train": dict(table.train)}


def teacher_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher's own task spec: the student's, with the teacher's model and training, no
    ``[teacher]`` table, its training-set logits kept, and its own task name
    (``<task>.teacher``)."""
    resolved = resolved_teacher(spec)
    out = {k: v for k, v in spec.items() if k != "teacher"}
    out["model"] = resolved["model"]
    out["train"] = deep_merge(spec.get("train", {}), resolved["train"])
    out["eval"] = dict(spec.get("eval", {})) | {"keep_train_logits": True}
    out["task"] = f"{spec['task']}{TEACHER_SUFFIX}"
    return out


def with_resolved_teacher(spec: dict[str, Any]) -> dict[str, Any]:
    """A task spec with its ``[teacher]`` table's defaults filled in (so a student's key and
    record say which teacher it had); a spec without one is returned as it is. Every loss of
    the task runs on this spec, so they share one setting; only distillation runs also carry
    their teacher's run key (``RunConfig.teacher``) and need the teacher trained."""
    return spec | {"teacher": resolved_teacher(spec)} if "teacher" in spec else spec


def check_teacher(spec: Mapping[str, Any], check_spec: Any) -> None:
    """A ``[teacher]`` table's checks before any data loads: its keys and types, and the
    teacher's spec as the family checks any spec (model options, the [train] table)."""
    if "teacher" in spec:
        require(isinstance(spec["teacher"], dict), f"teacher = {spec['teacher']!r}; expected a "
                                                   "table (loss, model, train)")
        try:
            check_spec(teacher_spec(spec))
        except UserError as err:
            raise UserError(f"the teacher's spec: {err}") from None


def load_teacher(teacher: Mapping[str, str], num_train: int, num_classes: int,
                 device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """(the teacher's training-set logits on ``device``, facts for the student's record: its
    key and test metrics). Raises (the student run fails, and is retried) when the teacher's
    arrays are missing or do not fit the student's training set."""
    from lossbench.engine.arrays import read_arrays

    arrays_file = Path(teacher["file"])
    arrays = read_arrays(arrays_file)
    if arrays is None or TRAIN_LOGITS not in arrays:
        raise RuntimeError(f"teacher {teacher['key']} has no training logits at {arrays_file} "
                           "(did the teacher run fail or diverge? `lossbench show KEY`)")
    logits = arrays[TRAIN_LOGITS]
    if logits.shape != (num_train, num_classes):
        raise RuntimeError(f"teacher {teacher['key']} logits {logits.shape} do not fit the "
                           f"student's training set ({num_train}, {num_classes})")
    record = json.loads(arrays_file.with_suffix(".json").read_text())
    metrics = record.get("metrics", {})
    facts = {f"teacher_{m}": float(metrics[m])
             for m in ("test_top1", "test_top1@best_val") if m in metrics}
    return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(device), (
        facts | {"teacher_key": teacher["key"]})
