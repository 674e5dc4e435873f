"""Task specs: TOML files in ``tasks/``; a task name is its file name.

Resolution order: the file's base tables, then its ``[budget.<tier>]`` overlay, then ``--set``
overrides. The resolved dict is what a run stores and hashes, so two runs with the same resolved
spec, loss, params and seed are the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

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
    path = files[name]
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"task file {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise UserError(f"task file {path} cannot be read: {err.strerror or err}") from None
    require(isinstance(raw.get("family"), str), f"task file {path} has no family = \"...\"")
    require(isinstance(raw.get("budget", {}), dict), f"task file {path}: budget must be a table")
    return raw


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


C = TypeVar("C")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, tuple[X, ...], Literal, X | None), or
    a UserError naming the key, the value and the type expected. No silent conversions: 2.5 is
    no int, "abc" no float, 1 no bool."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        return _coerce(value, next(o for o in options if o is not type(None)), where)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        require(value in choices, f"{where} got {value!r}; accepted: "
                                  + ", ".join(map(str, choices)))
        return value
    if origin is tuple:
        require(isinstance(value, list | tuple), f"{where} got {value!r}; expected a list")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item, where) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        require(isinstance(value, dict), f"{where} got {value!r}; expected a table")
        return value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        require(ok, f"{where} got {value!r}; expected a number")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        require(ok, f"{where} got {value!r}; expected an integer")
        return value
    if hint is bool:
        require(isinstance(value, bool), f"{where} got {value!r}; expected true or false")
        return value
    if hint is str:
        require(isinstance(value, str), f"{where} got {value!r}; expected a string")
        return value
    return value


def typed_table(cls: type[C], table: Mapping[str, Any], name: str) -> C:
    """A config dataclass from one spec table: unknown keys and wrong types are one-line
    ``UserError``s naming the key and listing what is accepted (``--set train.epoch=1`` and
    ``train.lr=abc`` must not start a run)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    require(not unknown, f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"accepted: {', '.join(f'{name}.{k}' for k in fields)}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in table.items()}
    return cls(**values)
