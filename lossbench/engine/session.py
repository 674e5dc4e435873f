"""What ``lossbench run`` and ``lossbench.run()`` share: the grid planned against its results
folder, with everything a user can get wrong checked before the first run trains (options, loss
and task specs, plug-ins, data presence, the device, a writable ``out``), and its execution,
each record saved the moment it arrives. A grid with distillation losses trains the teachers
they need first (once each; finished ones are reused), then the rest. Only
``resolve_workers`` is light; the rest imports the engine when called, so the CLI module stays
cheap to import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lossbench.errors import UserError, require

if TYPE_CHECKING:
    from lossbench.engine.grid import RunConfig
    from lossbench.engine.store import Store
    from lossbench.families.base import Reporter


def resolve_workers(workers: str, threads: int, groups: int) -> int:
    """``--workers`` -> a process count; ``auto`` = as many as the CPUs allow at ``threads``
    each, never more than there are groups of runs to train."""
    if workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        return max(1, min(cores // threads, groups))
    require(workers.isdigit() and int(workers) >= 1,
            f"--workers must be an integer >= 1 or 'auto', got {workers!r}")
    return int(workers)


@dataclass
class Plan:
    """A checked grid: every config, those still to run, the finished records reused."""

    configs: list[RunConfig]
    todo: list[RunConfig]
    reused: list[dict[str, Any]]
    store: Store
    workers: int
    device: str
    executor: str
    options: dict[str, Any] = field(default_factory=dict)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    """Records of ``out`` that cannot be read (path, why): their runs count as not finished."""
    teachers: list[RunConfig] = field(default_factory=list)
    """The teacher runs the distillation runs need; those still to train lead ``todo``."""

    def stages(self) -> list[list[RunConfig]]:
        """``todo`` in the order it must train: the teachers first, then everything else."""
        teachers = {t.key for t in self.teachers}
        first = [c for c in self.todo if c.key in teachers]
        rest = [c for c in self.todo if c.key not in teachers]
        return [stage for stage in (first, rest) if stage]

    @property
    def in_process(self) -> bool:
        """Whether runs train in this process (so a per-epoch reporter can be used)."""
        return self.executor == "local" and self.workers <= 1


def plan(
    losses: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int] | None,
    budget: str,
    overrides: Sequence[str] = (),
    *,
    out: Path,
    device: str = "auto",
    force: bool = False,
    workers: str = "auto",
    threads: int = 1,
    executor: str = "local",
    pack: str = "1",
    address: str = "local",
    gpus_per_run: float = 0.0,
) -> Plan:
    """The grid against the records of ``out``; raises UserError before any training."""
    from lossbench.commands.common import check_writable_dir
    from lossbench.engine.executors import EXECUTORS, pack_groups, pack_size
    from lossbench.engine.grid import expand, teacher_configs
    from lossbench.engine.store import Store
    from lossbench.engine.train import device_type

    if executor not in EXECUTORS:
        raise UserError(f"unknown executor '{executor}'; accepted: {', '.join(EXECUTORS)}")
    require(threads >= 1, f"--threads must be >= 1, got {threads}")
    resolve_workers(workers, threads, 1)  # a bad value fails before anything else
    pack_size(pack, device)  # a bad value fails before anything else
    options: dict[str, Any] = {"pack": pack}
    if executor == "ray":
        options |= {"address": address, "gpus_per_run": gpus_per_run}
    # Ray workers may have a GPU the driver lacks: only a local run checks CUDA here.
    dev_type = device_type(device, check=executor == "local")
    check_writable_dir(out)
    configs = expand(losses, tasks, seeds, budget, overrides, dev_type, threads)
    require(bool(configs), "the grid is empty; check --loss, --task and --seeds")
    store = Store(out)
    finished = {} if force else store.finished()  # from the tables: no record is parsed twice
    configs = [_with_teacher_file(c, store) for c in configs]
    teachers = teacher_configs(configs)
    todo = [t for t in teachers if not _teacher_ready(t, finished, store)]
    todo += [c for c in configs if c.key not in finished]
    reused = [finished[c.key] for c in configs if c.key in finished]
    groups = len(pack_groups(todo, pack, device))
    n_workers = resolve_workers(workers, threads, max(1, groups))
    return Plan(configs, todo, reused, store, n_workers, device, executor, options,
                list(getattr(store, "unreadable", [])), teachers)


def _with_teacher_file(cfg: RunConfig, store: Store) -> RunConfig:
    """A distillation run told where its teacher's arrays lie in this results folder."""
    if cfg.teacher is None:
        return cfg
    from dataclasses import replace

    from lossbench.engine.arrays import SUFFIX

    key = cfg.teacher["key"]
    return replace(cfg, teacher={"key": key,
                                 "file": str(store.path(key).with_suffix(SUFFIX).resolve())})


def _teacher_ready(teacher: RunConfig, finished: dict[str, dict[str, Any]], store: Store
                   ) -> bool:
    """A finished teacher is reused; one whose logits file is gone trains again (the same
    numbers on a CPU), and a diverged one stays (its students fail saying so)."""
    from lossbench.engine.arrays import SUFFIX

    if teacher.key not in finished:
        return False
    return (finished[teacher.key].get("status") != "ok"
            or store.path(teacher.key).with_suffix(SUFFIX).is_file())


def execute(plan: Plan, make_reporter: Callable[[RunConfig], Reporter] | None = None
            ) -> Iterator[dict[str, Any]]:
    """Train the plan's remaining runs; yields each record once it is saved in the store.
    ``make_reporter`` (per-epoch progress) is used only when runs train in this process."""
    from lossbench.engine.executors import EXECUTORS

    reporter = make_reporter if plan.in_process else None
    for stage in plan.stages():  # teachers, then the runs that read their logits
        for record in EXECUTORS[plan.executor](stage, plan.device, plan.workers, reporter,
                                               **plan.options):
            plan.store.save(record)  # the record, then its rows in the tables
            yield record
