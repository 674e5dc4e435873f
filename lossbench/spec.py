"""Task specs: TOML files in ``tasks/``; a task name is its file name.

Resolution order: the file's base tables, then its ``[budget.<tier>]`` overlay, then ``--set``
overrides. The resolved dict is what a run stores and hashes, so two runs with the same resolved
spec, loss, params and seed are the same run.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from lossbench.errors import UserError, require

BUDGETS = ("smoke", "quick", "paper")


def tasks_dirs() -> list[Path]:
    """Where task TOMLs live: inside the wheel (``lossbench/tasks``) or the source checkout."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "tasks", here.parent / "tasks") if d.is_dir()]


@cache
def _task_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in reversed(tasks_dirs()):
        files.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return files


def task_names() -> list[str]:
    return sorted(_task_files())


def load_task(name: str) -> dict[str, Any]:
    """The raw TOML of a task, including its budget overlays."""
    files = _task_files()
    if name not in files:
        raise UserError(f"unknown task '{name}'; accepted: {', '.join(task_names())}")
    with files[name].open("rb") as fh:
        return tomllib.load(fh)


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML literal (``0.3``, ``true``, ``[10, 20]``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(spec: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value``; the table that holds the key must already exist."""
    key, eq, raw = assignment.partition("=")
    require(bool(eq) and bool(key.strip()), f"bad --set {assignment!r}; expected key=value")
    parts = key.strip().split(".")
    node: Any = spec
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            prefix = ".".join(parts[: depth + 1])
            tables = ", ".join(k for k, v in node.items() if isinstance(v, dict))
            raise UserError(f"bad --set key '{key}': no table '{prefix}'; tables: {tables}")
        node = node[part]
    leaf = parts[-1]
    if len(parts) == 1 and leaf not in node:
        raise UserError(f"bad --set key '{key}'; top-level fields: {', '.join(node)}")
    node[leaf] = parse_value(raw.strip())


def resolve_task(name: str, budget: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The fully resolved spec of ``name`` at ``budget`` with ``--set`` overrides applied."""
    raw = load_task(name)
    require(budget in BUDGETS, f"unknown budget '{budget}'; accepted: {', '.join(BUDGETS)}")
    tiers = raw.get("budget", {})
    require(budget in tiers, f"task '{name}' has no '{budget}' budget; it has: {', '.join(tiers)}")
    base = {k: v for k, v in raw.items() if k != "budget"}
    spec = deep_merge(base, tiers[budget])
    for assignment in overrides:
        apply_override(spec, assignment)
    spec["task"] = name
    spec["budget"] = budget
    return spec
