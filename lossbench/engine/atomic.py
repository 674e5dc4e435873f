"""One way to write a file that readers never see half-written: a temp file beside it, fsync,
rename over the final name (the temp file is removed if anything fails)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], mode: int) -> None:
    """Write ``path`` through ``write(binary file)``; the file gets permission bits ``mode``
    (mkstemp's 0600 would hide a shared results folder from colleagues)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
