"""Where a data set's files are looked for: one order for every source.

1. ``data.dir`` (``--set data.dir=...``): the user's explicit folder, and nothing else;
2. ``$LOSSBENCH_DATA/<name>`` (default ``~/.cache/lossbench/data/<name>``): where
   ``lossbench data get`` puts a download;
3. ``<repo>/../shared/data/<name>``: the folder shared beside a checkout (CI has it);
4. the Debian install path, where a Debian package ships the set (``dataset-fashion-mnist``).

No lookup ever downloads: a download happens only through ``lossbench data get``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lossbench.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
"""The folder shared beside checkouts (``<repo>/../shared/data``)."""

DEBIAN_PATHS: dict[str, Path] = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}
"""Data sets a Debian package installs, by catalogue name."""


def data_home() -> Path:
    """``$LOSSBENCH_DATA``, else ``$XDG_CACHE_HOME/lossbench/data`` (``~/.cache/...``)."""
    env = os.environ.get("LOSSBENCH_DATA", "")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "lossbench" / "data"


def search_roots(name: str, dir: str = "") -> list[Path]:
    """The folders looked at for data set ``name``, in order (see the module docstring)."""
    if dir:
        return [Path(dir).expanduser()]
    roots = [data_home() / name, SHARED_DATA / name]
    if name in DEBIAN_PATHS:
        roots.append(DEBIAN_PATHS[name])
    return roots


def find_dataset(name: str, markers: Sequence[str], dir: str = "") -> Path | None:
    """The first search root of ``name`` holding every file in ``markers`` (paths relative to
    the root), or None."""
    for root in search_roots(name, dir):
        if all((root / marker).is_file() for marker in markers):
            return root
    return None


def missing_data(name: str, markers: Sequence[str], dir: str = "") -> UserError:
    """The one-line error for a data set that is nowhere: where it looked, how to get it."""
    where = ", ".join(str(r) for r in search_roots(name, dir))
    return UserError(
        f"data set '{name}' not found (looked for {', '.join(markers)} in {where}); get it with "
        f"`lossbench data get {name}` or pass --set data.dir=/path/to/{name}"
    )
