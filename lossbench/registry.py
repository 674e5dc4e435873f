"""A small generic registry: name -> factory, with a typed parameter schema read from the signature.

Parameters with a default are user-settable (``name:key=value`` on the CLI); parameters without a
default are *context* the engine supplies (``num_classes``, ``num_train``...). A trailing underscore
lets a parameter carry a Python keyword as its public name (``lambda_`` is set as ``lambda``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch

from lossbench.errors import UserError, require

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One user-settable parameter: public name, Python type, default and allowed choices."""

    name: str
    arg: str
    kind: type
    default: Any
    choices: tuple[Any, ...] | None = None

    def coerce(self, value: Any, owner: str) -> Any:
        """Turn a CLI string (or a Python value) into this parameter's type, or raise UserError."""
        try:
            if self.kind is bool and isinstance(value, str):
                low = value.lower()
                require(low in _TRUE | _FALSE, "")
                out: Any = low in _TRUE
            elif self.kind is int and isinstance(value, float) and value.is_integer():
                out = int(value)
            else:
                out = self.kind(value)
        except (ValueError, TypeError, UserError):
            raise UserError(
                f"{owner}: parameter '{self.name}' got {value!r}; expected {self.kind.__name__}"
            ) from None
        if self.kind is float and out != out:
            raise UserError(f"{owner}: parameter '{self.name}' got NaN; expected a number")
        if self.choices is not None and out not in self.choices:
            raise UserError(
                f"{owner}: parameter '{self.name}' got {value!r}; accepted: "
                + ", ".join(map(str, self.choices))
            )
        return out

    def describe(self) -> str:
        if self.choices:
            return f"{self.name}={self.default} ({'|'.join(map(str, self.choices))})"
        return f"{self.name}={self.default}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory with its schema and documentation."""

    name: str
    factory: Callable[..., T]
    params: tuple[Param, ...]
    context: tuple[str, ...]
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.factory) or ""

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        accepted = ", ".join(p.name for p in self.params) or "none"
        raise UserError(f"{self.name}: unknown parameter '{name}'; accepted: {accepted}")

    def resolve(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Full parameter dict (defaults filled in), values coerced and checked."""
        for key in values:
            self.param(key)
        return {p.name: p.coerce(values.get(p.name, p.default), self.name) for p in self.params}

    def build(self, values: Mapping[str, Any], **context: Any) -> T:
        """Instantiate with resolved user parameters plus whatever context the factory takes."""
        resolved = self.resolve(values)
        kwargs = {p.arg: resolved[p.name] for p in self.params}
        kwargs.update({k: v for k, v in context.items() if k in self.context})
        missing = [c for c in self.context if c not in kwargs]
        if missing:
            raise TypeError(f"{self.name}: engine did not supply {missing}")
        try:
            return self.factory(**kwargs)
        except ValueError as err:  # factories validate ranges with ValueError
            raise UserError(f"{self.name}: {err}") from None


PROBE_CONTEXT: dict[str, Any] = {
    "num_classes": 10, "num_train": 8, "embedding_dim": 16, "shots": 1, "temperature": 1.0,
    "train_inputs": torch.zeros(8, 4), "class_counts": (100, 60, 36, 22, 13, 8, 5, 3, 2, 1),
    "seed": 0, "train_bags": torch.arange(8), "teacher_logits": torch.zeros(8, 10),
}
"""Stand-in context used to check user parameters before any data is loaded."""


def check_params(entry: Entry[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve ``values`` and build once with stand-in context so range errors surface up front."""
    resolved = entry.resolve(values)
    if all(c in PROBE_CONTEXT for c in entry.context):
        entry.build(resolved, **PROBE_CONTEXT)
    return resolved


def _schema(factory: Callable[..., Any]) -> tuple[tuple[Param, ...], tuple[str, ...]]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    hints = typing.get_type_hints(target)
    params: list[Param] = []
    context: list[str] = []
    for arg, p in inspect.signature(factory).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            context.append(arg)
            continue
        hint = hints.get(arg, type(p.default))
        choices = None
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            hint = type(choices[0])
        params.append(Param(arg.rstrip("_"), arg, hint, p.default, choices))
    return tuple(params), tuple(context)


class Registry(Generic[T]):
    """Name -> factory; ``kind`` names what is registered, for error messages ('loss'...)."""

    def __init__(self, kind: str, entry_type: type[Entry[Any]] = Entry) -> None:
        self.kind = kind
        self.entry_type = entry_type
        self._entries: dict[str, Entry[T]] = {}
        self._added: dict[str, Entry[T]] = {}

    def register(self, name: str, **tags: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            params, context = _schema(factory)
            self._entries[name] = self.entry_type(name, factory, params, context, dict(tags))
            return factory

        return decorate

    def add(self, entry: Entry[T]) -> None:
        """Make a ready-made entry (a plug-in) findable by ``get``, replacing one of the same
        name; it stays out of ``names`` and iteration, which list the registered catalogue."""
        self._added[entry.name] = entry

    def get(self, name: str) -> Entry[T]:
        if name in self._entries:
            return self._entries[name]
        if name in self._added:
            return self._added[name]
        raise UserError(f"unknown {self.kind} '{name}'; accepted: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def parse_spec(text: str) -> tuple[str, dict[str, str]]:
    """Split ``name:key=value,key=value`` into the name and its raw string parameters."""
    name, _, rest = text.strip().partition(":")
    require(bool(name), f"empty spec {text!r}; expected name or name:key=value,...")
    return name, parse_params(rest, text)


def parse_params(rest: str, text: str) -> dict[str, str]:
    """``key=value,key=value`` (the part of spec ``text`` after the name) -> raw parameters."""
    params: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        require(bool(eq) and bool(key), f"bad parameter {item!r} in {text!r}; expected key=value")
        require(key.strip() not in params, f"parameter '{key.strip()}' given twice in {text!r}")
        params[key.strip()] = value.strip()
    return params
