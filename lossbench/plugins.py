"""Losses from outside lossbench: a class or factory in an importable module or a ``.py`` file,
and the ``lossbench.losses`` entry-point group of installed packages.

A loss spec (one ``--loss`` value) is read left to right::

    NAME[:k=v,...]              a built-in loss, or an entry-point plug-in ('.', '/', ':' never
                                appear in NAME)
    PATH.py:OBJECT[:k=v,...]    a Python file (the part before ':' ends in .py) and a class or
                                factory in it
    MODULE:OBJECT[:k=v,...]     an importable module (dotted, or a bare name that is not a loss)
                                and a class or factory in it; the current folder is searched
                                too, as ``python -m`` would

OBJECT is an identifier (or a dotted attribute path); parameters always follow the last ':'
and contain '=', which an OBJECT never does, so ``ce:q=1`` and ``my_loss:Tempered`` cannot be
confused. A plug-in passes the checks a built-in does: its ``consumes`` kind (a class
attribute), a parameter schema read from its signature (int, float, bool, str or a Literal of
them), and a probe build before the grid; whatever is wrong is one ``UserError`` line naming the
spec. It is loaded by reference (module name, or absolute file path), never pickled, so worker
processes load it the same way, and the sha256 of the file that defines it goes into the run key
(``RunConfig.loss_source``): an edited loss is a new run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from lossbench.errors import UserError, require
from lossbench.losses import LOSSES
from lossbench.losses.base import Consumes
from lossbench.losses.reducers import LossEntry
from lossbench.registry import PROBE_CONTEXT, Entry, _schema, parse_params

LOSS_GROUP = "lossbench.losses"
KINDS: tuple[str, ...] = typing.get_args(Consumes)
PARAM_TYPES = (int, float, bool, str)
_OBJECT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Plugin:
    """A loaded plug-in loss: its registry entry and where its code comes from (the config's
    ``loss_source``: ``spec`` and ``sha256`` identify the code, ``target`` and ``file`` say where
    a worker process finds it)."""

    entry: Entry[Any]
    source: dict[str, str]


def parse_loss_spec(text: str) -> tuple[str, dict[str, str]]:
    """A ``--loss`` value -> (loss name, raw parameters). A plug-in's name is its reference
    (``pkg.mod:Class``, ``path/file.py:Class`` with the path normalised); see the module doc."""
    text = text.strip()
    head, colon, rest = text.partition(":")
    require(bool(head), f"empty loss spec {text!r}; expected name, name:key=value,..., "
                        "module:Class or path/file.py:Class")
    obj, _, params = rest.partition(":")
    names_object = bool(colon) and _OBJECT.fullmatch(obj.strip()) is not None
    if head.endswith(".py"):
        require(names_object, f"loss spec {text!r}: a file plug-in is path/file.py:Class"
                              "[:key=value,...]; name the class or factory after the file")
        return f"{os.path.normpath(head)}:{obj.strip()}", parse_params(params, text)
    dotted = "." in head or "/" in head
    if dotted or (names_object and not _is_named_loss(head)):
        require(_OBJECT.fullmatch(head) is not None and names_object,
                f"loss spec {text!r}: a plug-in is module:Class[:key=value,...] (a dotted "
                "module path) or path/file.py:Class[:key=value,...]; built-in names have no "
                "'.' or '/'")
        return f"{head}:{obj.strip()}", parse_params(params, text)
    try:
        return head, parse_params(rest, text)
    except UserError as err:
        if names_object and obj.strip()[0].isupper():  # `focal:Focal`: a module named like a
            # loss reads as that loss
            raise UserError(f"{err} (a module plug-in named like the loss '{head}' must be "
                            f"given as a file: ./{head}.py:{obj.strip()})") from None
        raise


def is_plugin_name(name: str) -> bool:
    """Whether a (parsed) loss name is a module or file reference rather than a registry name."""
    return ":" in name


def _is_named_loss(name: str) -> bool:
    return name == "all" or name in LOSSES or name in _entry_points()


def _entry_points() -> dict[str, EntryPoint]:
    """Installed ``lossbench.losses`` entry points by name (the first of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=LOSS_GROUP):
        found.setdefault(ep.name, ep)
    return found


def entry_point_names() -> list[str]:
    return sorted(_entry_points())


def lookup(name: str) -> tuple[Entry[Any], dict[str, str] | None]:
    """The registry entry of a loss name and, for a plug-in, its ``loss_source`` (None for a
    built-in). Plug-ins are loaded (again when their file changed) and added to ``LOSSES``, so
    the families find them by name like any loss."""
    if name in LOSSES:
        return LOSSES.get(name), None
    if is_plugin_name(name):
        target = name
        if name.rpartition(":")[0].endswith(".py"):
            path, _, obj = name.rpartition(":")
            target = f"{Path(path).resolve()}:{obj}"
        plugin = _load(name, name, target)
    else:
        eps = _entry_points()
        if name not in eps:
            installed = f"; installed plug-ins: {', '.join(sorted(eps))}" if eps else ""
            raise UserError(f"unknown loss '{name}'; accepted: {', '.join(LOSSES.names())}"
                            f"{installed}; or your own: module:Class or file.py:Class")
        ep = eps[name]
        where = f"entry point '{name} = {ep.value}'"
        require(bool(ep.attr), f"loss plug-in {where}: it names a module, not a class or factory; "
                               "write module:Class")
        plugin = _load(name, ep.value, f"{ep.module}:{ep.attr}", where)
    LOSSES.add(plugin.entry)
    return plugin.entry, plugin.source


def probe(entry: Entry[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``check_params`` for a plug-in: any exception its constructor raises, and a built object
    that is not a torch module, are one line naming the spec, before the grid starts."""
    resolved = entry.resolve(values)
    shown = ",".join(f"{k}={v}" for k, v in resolved.items()) or "its defaults"
    try:
        built = entry.build(resolved, **PROBE_CONTEXT)  # _entry made sure the context is there
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"loss plug-in '{entry.name}': building it with {shown} raised "
                        f"{_one_line(err)}") from None
    require(isinstance(built, nn.Module),
            f"loss plug-in '{entry.name}': it built a {type(built).__name__}, not a "
            "torch.nn.Module (a loss is a module whose forward returns one loss per example)")
    return resolved


def register_sources(configs: Iterable[Any]) -> None:
    """In a worker process: load the plug-in losses of ``configs`` (RunConfigs) from their
    recorded source, refusing code that changed since the grid was planned."""
    for cfg in configs:
        source = cfg.loss_source
        if source is None or cfg.loss in LOSSES:
            continue
        plugin = _load(cfg.loss, source["spec"], source["target"])
        require(plugin.source["sha256"] == source["sha256"],
                f"loss plug-in '{cfg.loss}': {source['file']} changed since the grid was "
                "planned; run the command again to plan it with the new code")
        LOSSES.add(plugin.entry)


# --------------------------------------------------------------------------------------------
# Loading


def _load(name: str, spec: str, target: str, where: str | None = None) -> Plugin:
    """Import ``target`` (``module:attr`` or ``/abs/file.py:attr``) and check it as a loss."""
    where = where or f"'{name}'"
    location, _, attr = target.rpartition(":")
    if location.endswith(".py"):
        obj, file = _from_file(Path(location), attr, where)
    else:
        obj, file = _from_module(location, attr, where)
    sha = _sha256(file) if file else ""
    entry = _entry(name, obj, where)
    return Plugin(entry, {"spec": spec, "target": target, "file": file or "", "sha256": sha})


def _from_file(path: Path, attr: str, where: str) -> tuple[Any, str]:
    """A file's object. The module is named after the file's hash, so an edited file is a new
    module (a notebook sees the edit) and the same content is imported once."""
    try:
        code = path.read_bytes()
    except OSError as err:
        raise UserError(f"loss plug-in {where}: cannot read {path} "
                        f"({err.strerror or err})") from None
    module_name = f"lossbench_plugin_{hashlib.sha256(code).hexdigest()[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        require(spec is not None and spec.loader is not None,
                f"loss plug-in {where}: {path} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except (Exception, SystemExit) as err:
            del sys.modules[module_name]
            raise UserError(f"loss plug-in {where}: importing {path} raised "
                            f"{_one_line(err)}") from None
    return _attr(module, attr, where, str(path)), str(path)


_LOADED: dict[str, str] = {}
"""Source file of a module plug-in -> the sha256 it had when lossbench (re)loaded it."""


def _from_module(module_name: str, attr: str, where: str) -> tuple[Any, str | None]:
    """A module's object; a module whose file changed since it was loaded here is reloaded."""
    module = _import(module_name, where)
    obj = _attr(module, attr, where, module_name)
    file = _source_file(obj, module)
    if file is None:
        return obj, None
    sha = _sha256(file)
    if _LOADED.setdefault(file, sha) != sha:
        defining = sys.modules.get(getattr(obj, "__module__", ""), module)
        try:
            for mod in dict.fromkeys((defining, module)):
                importlib.reload(mod)
        except (Exception, SystemExit) as err:
            raise UserError(f"loss plug-in {where}: reloading {module_name} raised "
                            f"{_one_line(err)}") from None
        obj = _attr(module, attr, where, module_name)
        _LOADED[file] = sha
    return obj, file


def _import(module_name: str, where: str) -> ModuleType:
    """``import module_name``; a top-level module not found on ``sys.path`` is also looked for
    in the current folder, as ``python -m`` would (the ``lossbench`` script does not)."""
    importlib.invalidate_caches()  # a module written since the last import attempt
    for attempt in range(2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            top = module_name.split(".")[0]
            cwd = os.getcwd()
            if attempt == 0 and err.name == top and cwd not in sys.path and "" not in sys.path:
                sys.path.append(cwd)
                continue
            raise UserError(f"loss plug-in {where}: cannot import module '{module_name}' "
                            f"({_one_line(err)}); is it installed, on PYTHONPATH or in the "
                            "current folder?") from None
        except (Exception, SystemExit) as err:
            raise UserError(f"loss plug-in {where}: importing {module_name} raised "
                            f"{_one_line(err)}") from None
    raise AssertionError("unreachable")


def _attr(module: ModuleType, attr: str, where: str, origin: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(
                n for n, v in vars(module).items()
                if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
                and getattr(v, "__module__", None) == module.__name__)
            raise UserError(f"loss plug-in {where}: {origin} has no '{attr}'; it defines: "
                            f"{', '.join(defined) or 'no classes or functions'}")
        obj = getattr(obj, part)
    return obj


def _source_file(obj: Any, module: ModuleType) -> str | None:
    try:
        file = inspect.getsourcefile(obj)
    except TypeError:
        file = None
    file = file or getattr(module, "__file__", None)
    return str(Path(file).resolve()) if file and Path(file).is_file() else None


def _sha256(file: str) -> str:
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Checks: what a built-in loss's registration guarantees, asked of a plug-in


def _entry(name: str, obj: Any, where: str) -> Entry[Any]:
    """The registry entry of a plug-in object, or a UserError saying what it lacks."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        raise UserError(f"loss plug-in {where}: it is a {type(obj).__name__} object, not a class "
                        "or factory function; name the class")
    consumes = getattr(obj, "consumes", None)
    require(consumes is not None,
            f"loss plug-in {where}: it declares no consumes kind; add the class attribute "
            f"consumes = \"logits\" (one of {', '.join(KINDS)})")
    require(consumes in KINDS, f"loss plug-in {where}: consumes = {consumes!r} is not a kind; "
                               f"accepted: {', '.join(KINDS)}")
    try:
        params, context = _schema(obj)
    except Exception as err:
        raise UserError(f"loss plug-in {where}: its signature cannot be read "
                        f"({_one_line(err)})") from None
    for p in params:
        require(p.kind in PARAM_TYPES,
                f"loss plug-in {where}: parameter '{p.name}' has type "
                f"{getattr(p.kind, '__name__', p.kind)}; plug-in parameters are int, float, "
                "bool, str or a Literal of them (annotate it, or give a default of one of those)")
        try:
            p.coerce(p.default, name)
        except UserError as err:
            raise UserError(f"loss plug-in {where}: the default of parameter '{p.name}' does "
                            f"not fit its type ({err})") from None
    unknown = [c for c in context if c not in PROBE_CONTEXT]
    require(not unknown,
            f"loss plug-in {where}: argument '{unknown[0] if unknown else ''}' has no default "
            f"and is none of what lossbench supplies ({', '.join(PROBE_CONTEXT)}); give it a "
            "default to make it a parameter")
    paper = str(getattr(obj, "paper", "") or f"plug-in {name}")
    return LossEntry(name, obj, params, context, {"consumes": consumes, "paper": paper,
                                              "plugin": where})


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
