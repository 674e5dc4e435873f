"""Task specs: TOML files in ``tasks/``; a task name is its file name.

Tasks from outside the package: ``--task path/to/task.toml`` (named after the file's stem), the
folders of ``$LOSSBENCH_TASKS`` (``os.pathsep``-separated, searched after the built-in
``tasks/``) and the ``lossbench.tasks`` entry points of installed packages (searched last; each
names an object that is the path of a TOML file; the task is named after the entry point).

Resolution order: the file's base tables, then its ``[budget.<tier>]`` overlay, then ``--set``
overrides. The resolved dict is what a run stores and hashes, so two runs with the same resolved
spec, loss, params and seed are the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import os
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


TASKS_ENV = "LOSSBENCH_TASKS"
TASK_GROUP = "lossbench.tasks"


def search_dirs() -> list[Path]:
    """The built-in task folders, then those of ``$LOSSBENCH_TASKS`` (read at each call, so a
    change of the variable counts at once); an earlier folder wins a name."""
    extra = [Path(p).expanduser() for p in os.environ.get(TASKS_ENV, "").split(os.pathsep)
             if p.strip()]
    return [*tasks_dirs(), *(d for d in extra if d.is_dir())]


@cache
def _task_files(dirs: tuple[Path, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in reversed(dirs):
        files.update({p.stem: p for p in sorted(folder.glob("*.toml"))})
    return files


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for ep in entry_points(group=TASK_GROUP):
        found.setdefault(ep.name, ep)
    return found


def task_names() -> list[str]:
    return sorted(set(_task_files(tuple(search_dirs()))) | set(_entry_points()))


def is_task_path(name: str) -> bool:
    """A ``--task`` value that names a file rather than a task: it ends in .toml or has a '/'."""
    return name.endswith(".toml") or "/" in name or os.sep in name


def task_name(name: str) -> str:
    """The name a task's runs carry: a task file's stem, else the name itself."""
    return Path(name).stem if is_task_path(name) else name


def locate_task(name: str) -> Path:
    """The TOML file of a task name or path (built-in folders, ``$LOSSBENCH_TASKS``, entry
    points), or a UserError saying what was looked for."""
    if is_task_path(name):
        path = Path(name).expanduser()
        require(path.suffix == ".toml", f"task path '{name}' does not end in .toml; a task is a "
                                        "name (see `lossbench list tasks`) or a .toml file")
        require(path.is_file(), f"no task file '{name}'"
                + (" (it is a folder)" if path.is_dir() else ""))
        return path.resolve()
    files = _task_files(tuple(search_dirs()))
    if name in files:
        return files[name]
    ep = _entry_points().get(name)
    if ep is not None:
        return _entry_point_path(ep)
    missing = [p for p in os.environ.get(TASKS_ENV, "").split(os.pathsep)
               if p.strip() and not Path(p).expanduser().is_dir()]
    note = f" (${TASKS_ENV} names missing folder(s): {', '.join(missing)})" if missing else ""
    raise UserError(f"unknown task '{name}'; accepted: {', '.join(task_names())}{note}")


def _entry_point_path(ep: Any) -> Path:
    where = f"task entry point '{ep.name} = {ep.value}'"
    try:
        obj = ep.load()
    except (Exception, SystemExit) as err:
        raise UserError(f"{where}: loading it raised {type(err).__name__}: "
                        f"{' '.join(str(err).split())}") from None
    require(isinstance(obj, str | os.PathLike), f"{where}: it is a {type(obj).__name__}; a "
                                               "task entry point names the path of a .toml file")
    path = Path(os.fspath(obj))
    require(path.suffix == ".toml" and path.is_file(), f"{where}: {path} is not a .toml file")
    return path


def outside_task_file(name: str) -> str | None:
    """The path of a task file from outside the package (recorded with its runs); None for a
    built-in task."""
    path = locate_task(name)
    builtin = any(path.resolve().parent == d.resolve() for d in tasks_dirs())
    return None if builtin else str(path.resolve())


def load_task(name: str) -> dict[str, Any]:
    """The raw TOML of a task (a name or a path), including its budget overlays."""
    path = locate_task(name)
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
    spec["task"] = task_name(name)
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
