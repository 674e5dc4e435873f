"""Grid expansion: (loss specs x tasks x seeds) -> fully resolved run configs, each with a key.

The run key is a hash of the fully resolved config (task spec after budget and ``--set``, loss
name, loss params with defaults filled in, seed) and of what changes the numbers of the same
config (the device type and the torch thread count), so a changed default, override or numeric
setting is a new run and a results folder never mixes numbers under one key. A plug-in loss
adds the sha256 of its source file (an edited loss is a new run); a task file from outside the
package needs nothing more, its content being in the resolved spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from typing import Any

from lossbench import plugins
from lossbench.errors import UserError, require
from lossbench.families import FAMILIES
from lossbench.families.teacher import read_teacher, teacher_spec, with_resolved_teacher
from lossbench.losses import LOSSES
from lossbench.losses.distill import needs_teacher
from lossbench.losses.reducers import is_reduce_key
from lossbench.registry import Entry, check_params
from lossbench.spec import outside_task_file, resolve_task


@dataclass(frozen=True)
class RunConfig:
    """One cell of the grid, fully resolved."""

    task: str
    family: str
    budget: str
    loss: str
    loss_params: Mapping[str, Any]
    seed: int
    spec: Mapping[str, Any]
    device: str = "cpu"
    """Device type the run trains on (``cpu`` / ``cuda``): numbers differ between them."""
    threads: int = 1
    """Torch CPU threads of the run: float sums (and so numbers) depend on it."""
    loss_source: Mapping[str, str] | None = None
    """Plug-in losses only: ``spec`` (the reference) and ``sha256`` (of the file defining it),
    both in the key, and where a worker process loads it from (``target``, ``file``)."""
    task_file: str | None = None
    """Tasks from outside the package only: the TOML's path, recorded but not in the key (the
    resolved ``spec`` is, so the file's content is covered)."""
    teacher: Mapping[str, str] | None = None
    """Distillation runs only: the teacher run's ``key`` (part of this run's key) and ``file``,
    the path of its arrays (set by the session for its results folder; not in the key)."""

    def as_dict(self) -> dict[str, Any]:
        """The config as records store it; the plug-in fields appear only where set, so a
        built-in run's record and key are unchanged by their existence."""
        config = asdict(self)
        for name in ("loss_source", "task_file", "teacher"):
            if config[name] is None:
                del config[name]
        return config

    @cached_property
    def key(self) -> str:
        """``run_key`` of ``as_dict()`` without ``task_file`` and with only a plug-in's identity
        (``spec``, ``sha256``: the code, not where it lies), computed faster: the spec (shared by
        a task's configs) is serialised once, not deep-copied and serialised per config."""
        config = {f.name: getattr(self, f.name) for f in fields(self)} | {"spec": _SPEC_SLOT}
        del config["task_file"]
        if self.teacher is None:
            del config["teacher"]
        else:
            config["teacher"] = {"key": self.teacher["key"]}
        if self.loss_source is None:
            del config["loss_source"]
        else:
            config["loss_source"] = {k: self.loss_source[k] for k in ("spec", "sha256")}
        return _digest(_canonical(config).replace(_SPEC_SLOT_TEXT, _spec_text(self.spec), 1))

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.loss_params.items())
        return f"{self.loss}{':' + params if params else ''} · {self.task} · seed {self.seed}"


def run_key(config: Mapping[str, Any]) -> str:
    return _digest(_canonical(config))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_SPEC_SLOT = "\x00spec\x00"  # no field holds a NUL character: a unique placeholder
_SPEC_SLOT_TEXT = _canonical(_SPEC_SLOT)
_SPEC_TEXTS: dict[int, tuple[Mapping[str, Any], str]] = {}


def _spec_text(spec: Mapping[str, Any]) -> str:
    """``_canonical(spec)``, once per spec object (held, so its id is not reused)."""
    hit = _SPEC_TEXTS.get(id(spec))
    if hit is None or hit[0] is not spec:
        if len(_SPEC_TEXTS) > 256:
            _SPEC_TEXTS.clear()
        hit = _SPEC_TEXTS[id(spec)] = (spec, _canonical(spec))
    return hit[1]


def parse_seeds(text: str | None) -> list[int] | None:
    """``0,1,2`` or ``0-4`` -> list of ints; None keeps the task's default seeds."""
    if text is None or not text.strip():
        return None
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            require(first >= 0, f"bad --seeds {text!r}: seeds are >= 0")
            require(first <= last, f"bad --seeds {text!r}: empty range {part.strip()}; "
                                   "write low-high, e.g. 0-4")
            seeds += list(range(first, last + 1))
    except ValueError:
        raise UserError(f"bad --seeds {text!r}; expected e.g. 0,1,2 or 0-4") from None
    require(len(seeds) == len(set(seeds)), f"bad --seeds {text!r}: repeated seed")
    return seeds


def task_default_seeds(spec: Mapping[str, Any]) -> list[int]:
    """The spec's ``seeds`` (a list of integers >= 0), used when ``--seeds`` is not given."""
    seeds = spec.get("seeds", [0])
    ok = isinstance(seeds, list) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    require(ok and bool(seeds), f"task '{spec['task']}': seeds = {seeds!r}; expected a list of "
                                "integers >= 0 (or pass --seeds, e.g. 0,1,2)")
    require(len(seeds) == len(set(seeds)), f"task '{spec['task']}': repeated seed in {seeds}")
    return list(seeds)


def accepted_kinds(family: str) -> tuple[str, ...]:
    return tuple(FAMILIES.get(family).tags.get("accepts", ()))


LossChoice = tuple[str, dict[str, Any], dict[str, str] | None]
"""(loss name, resolved params, plug-in source or None)."""


def expand_losses(specs: Iterable[str], family: str) -> list[LossChoice]:
    """Loss specs -> (name, resolved params, plug-in source). ``all`` means every built-in
    loss the family accepts; plug-ins (``plugins.parse_loss_spec``) get the same checks."""
    kinds = accepted_kinds(family)
    supplies = set(FAMILIES.get(family).tags.get("supplies", ()))

    def trainable(entry: Entry[Any]) -> bool:  # ``explicit`` losses are named, never 'all'
        return (entry.tags["consumes"] in kinds and set(entry.context) <= supplies
                and not entry.tags.get("explicit"))

    out: list[LossChoice] = []
    for text in specs:
        name, raw = plugins.parse_loss_spec(text)
        if name == "all":
            require(all(is_reduce_key(k) for k in raw),
                    "'all' takes no parameters but a reducer (all:reduce=NAME,reduce.k=v)")
            out += [(e.name, e.resolve(raw), None) for e in LOSSES if trainable(e)]
            continue
        entry, source = plugins.lookup(name)
        consumes = entry.tags["consumes"]
        require(
            consumes in kinds,
            f"loss '{name}' consumes {consumes} but a {family} task accepts {', '.join(kinds)}",
        )
        missing = sorted(set(entry.context) - supplies)
        require(not missing, f"loss '{name}' needs {', '.join(missing)}, which a {family} task "
                             "does not provide")
        params = check_params(entry, raw) if source is None else plugins.probe(entry, raw)
        out.append((name, params, source))
    return out


def expand(
    losses: Sequence[str],
    tasks: Sequence[str | tuple[str, Sequence[str]]],
    seeds: Sequence[int] | None,
    budget: str,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    threads: int = 1,
) -> list[RunConfig]:
    """The grid in run order (task, loss, seed), duplicates removed; ``device`` is the device
    type the runs will train on, ``threads`` their torch CPU thread count. A task may carry its
    own overrides, ``(task, [key=value, ...])`` (a suite's setting); ``overrides`` (``--set``)
    apply after them."""
    require(bool(losses), "no --loss given; try --loss ce or --loss all")
    require(bool(tasks), "no --task given; see `lossbench list tasks`")
    runs: dict[str, RunConfig] = {}
    for entry in tasks:
        task, own = (entry, ()) if isinstance(entry, str) else entry
        spec = resolve_task(task, budget, [*own, *overrides])
        family = str(spec.get("family", ""))
        check = FAMILIES.get(family).tags.get("check")
        if check is not None:
            check(spec)
        spec = with_resolved_teacher(spec)
        default_seeds = task_default_seeds(spec)  # checked even when --seeds replaces them
        task_seeds = list(seeds) if seeds is not None else default_seeds
        check_loss = FAMILIES.get(family).tags.get("check_loss")
        task_file = outside_task_file(task)
        for name, params, source in expand_losses(losses, family):
            if check_loss is not None:
                check_loss(spec, name)
            for seed in task_seeds:
                cfg = RunConfig(spec["task"], family, budget, name, params, int(seed), spec,
                                device, threads, source, task_file)
                if needs_teacher(name):
                    cfg = replace(cfg, teacher={"key": teacher_config(cfg).key})
                runs.setdefault(cfg.key, cfg)
    return list(runs.values())


def teacher_config(student: RunConfig) -> RunConfig:
    """The teacher run of a distillation run: an ordinary run of the teacher's spec
    (``families.teacher.teacher_spec``) with the teacher's loss, at the student's seed, budget
    and numerics; its key is the ordinary key of that config."""
    spec = teacher_spec(student.spec)
    text = read_teacher(student.spec).loss
    require(text.strip() != "all", "teacher.loss = 'all' names no one loss; e.g. ce")
    try:
        [(name, params, source)] = expand_losses([text], student.family)
    except UserError as err:
        raise UserError(f"teacher.loss = {text!r}: {err}") from None
    require(not needs_teacher(name), f"teacher.loss = {text!r} distils a teacher itself; "
                                     "a teacher is trained on labels (e.g. ce)")
    return RunConfig(spec["task"], student.family, student.budget, name, params, student.seed,
                     spec, student.device, student.threads, source, student.task_file)


def teacher_configs(configs: Iterable[RunConfig]) -> list[RunConfig]:
    """The distinct teacher runs the distillation runs among ``configs`` need, in order."""
    teachers: dict[str, RunConfig] = {}
    for cfg in configs:
        if cfg.teacher is not None:
            teacher = teacher_config(cfg)
            teachers.setdefault(teacher.key, teacher)
    return list(teachers.values())
