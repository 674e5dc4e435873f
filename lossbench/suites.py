"""Suites: named lists of settings -- a task with its ``--set`` overrides -- run and reported as
one study (``tasks/suites/<name>.toml``), the columns of a paper's table.

A suite file::

    description = "..."
    losses = ["ce", "ldr", "gce"]     # what --loss defaults to for this suite (optional)

    [[setting]]
    task = "letter-noisy"
    label = "letter · uniform 0.3"   # the column header in reports
    set = ["noise.kind=uniform", "noise.rate=0.3"]

Runs keep their ordinary keys (a suite is not part of a run's config), so a suite reuses any run
already made with the same resolved spec, and reports find a setting's runs by that spec.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lossbench.errors import UserError, require


@dataclass(frozen=True)
class Setting:
    """One column of a suite: a task and the overrides that make the setting."""

    task: str
    overrides: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    settings: tuple[Setting, ...]
    losses: tuple[str, ...]
    path: Path


def suite_dirs() -> list[Path]:
    """``suites/`` beside every task folder (the package's, the checkout's)."""
    from lossbench.spec import tasks_dirs

    return [d / "suites" for d in tasks_dirs() if (d / "suites").is_dir()]


def _suite_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in reversed(suite_dirs()):
        files.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return files


def suite_names() -> list[str]:
    return sorted(_suite_files())


def _strings(value: Any, where: str) -> tuple[str, ...]:
    require(isinstance(value, list) and all(isinstance(v, str) for v in value),
            f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def load_suite(name: str) -> Suite:
    """The suite ``name``, its file checked: one-line errors name the file and the entry."""
    files = _suite_files()
    if name not in files:
        raise UserError(f"unknown suite '{name}'; accepted: {', '.join(suite_names()) or 'none'}")
    path = files[name]
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"suite file {path} cannot be read: {err}") from None
    unknown = sorted(set(raw) - {"description", "losses", "setting"})
    require(not unknown, f"suite file {path}: unknown key(s) {', '.join(unknown)}; accepted: "
                         "description, losses, setting")
    entries = raw.get("setting", [])
    require(isinstance(entries, list) and bool(entries),
            f"suite file {path} has no [[setting]] entries")
    settings = []
    for i, entry in enumerate(entries, 1):
        where = f"suite file {path}, setting {i}"
        require(isinstance(entry, dict), f"{where} must be a table")
        extra = sorted(set(entry) - {"task", "label", "set"})
        require(not extra, f"{where}: unknown key(s) {', '.join(extra)}; accepted: task, "
                           "label, set")
        require(isinstance(entry.get("task"), str), f"{where} needs task = \"...\"")
        overrides = _strings(entry.get("set", []), f"{where}: set")
        label = entry.get("label", " ".join([entry["task"], *overrides]))
        require(isinstance(label, str), f"{where}: label must be a string")
        settings.append(Setting(entry["task"], overrides, label))
    labels = [s.label for s in settings]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    require(not twice, f"suite file {path}: label(s) {', '.join(twice)} used twice")
    losses = _strings(raw.get("losses", []), f"suite file {path}: losses")
    return Suite(name, str(raw.get("description", "")), tuple(settings), losses, path)
