"""The Python API: ``lossbench.run(...)`` for notebooks and scripts, on the engine ``lossbench
run`` uses (same checks, same store, same run keys: a grid run from the CLI is resumed here and
the other way round)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lossbench.commands.common import DEFAULT_OUT

if TYPE_CHECKING:
    import pandas as pd


def run(
    losses: str | Sequence[str],
    tasks: str | Sequence[str],
    seeds: Sequence[int] | str | None = None,
    budget: str = "quick",
    overrides: Sequence[str] | dict[str, object] = (),
    out: str | os.PathLike[str] = DEFAULT_OUT,
    device: str = "auto",
    workers: int | str = 1,
    threads: int = 1,
    force: bool = False,
    pack: int | str = 1,
) -> pd.DataFrame:
    """Run (or resume) the loss x task x seed grid and return its tidy runs table: one row per
    run x final metric, the rows of ``runs.parquet`` for this grid's runs.

    ``losses``: loss specs as on the CLI (``"ce"``, ``"gce:q=0.7"``, ``"my_loss.py:Mine:t=2"``,
    ``"pkg.mod:Mine"``); ``tasks``: task names or ``.toml`` paths; ``seeds``: a list or
    ``"0-4"`` (None: the tasks' own); ``overrides``: ``["noise.rate=0.2"]`` or
    ``{"noise.rate": 0.2}``; ``workers``: processes (1: in this process). Finished runs in
    ``out`` are reused unless ``force``. Bad input raises ``lossbench.errors.UserError``.
    Failed runs are rows with ``status == "failed"`` (``lossbench show KEY`` has the traceback).
    """
    from lossbench.engine.grid import parse_seeds
    from lossbench.engine.session import execute, plan
    from lossbench.errors import require

    losses = [losses] if isinstance(losses, str) else list(losses)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    for what, values in (("losses", losses), ("tasks", tasks)):
        bad = [v for v in values if not isinstance(v, str | os.PathLike)]
        require(not bad, f"{what} are text specs, as on the command line; got {bad[0]!r} "
                         "(a loss class is named by where it lives: 'pkg.mod:MyLoss' or "
                         "'my_loss.py:MyLoss')" if bad else "")
    if isinstance(overrides, dict):
        overrides = [f"{k}={_toml(v)}" for k, v in overrides.items()]
    if seeds is not None:  # checked as --seeds is: integers >= 0, none repeated
        seeds = parse_seeds(seeds if isinstance(seeds, str) else ",".join(map(str, seeds)))
    grid = plan(
        [os.fspath(v) for v in losses], [os.fspath(v) for v in tasks],
        None if seeds is None else list(seeds), budget, list(overrides), out=Path(out),
        device=device, force=force, workers=str(workers), threads=threads, pack=str(pack))
    for _ in execute(grid):
        pass
    return grid.store.tables.runs_frame(keys={c.key for c in grid.configs})


def _toml(value: object) -> str:
    """A Python value as the TOML literal ``--set`` parses (strings quoted, lists kept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
