"""What every command shares: the consoles, the one-line error wrapper, common options, and
checks that an output path is writable before any work starts."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from lossbench.errors import UserError


class _QuietStdout:
    """``sys.stdout`` (looked up at each write, as Rich does), which stops writing, silently, once
    its reader has gone (``lossbench run | head``): a closed stdout must not end a grid; runs
    keep going and keep being saved.
    """

    def __init__(self) -> None:
        self.closed_by_reader = False

    @property
    def _stream(self) -> IO[str]:
        return sys.stdout

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._close()
            except OSError as err:
                if err.errno != errno.EPIPE:
                    raise
                self._close()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._close()

    def _close(self) -> None:
        self.closed_by_reader = True
        # Python flushes sys.stdout at exit; point it somewhere harmless.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# No emoji codes: a plug-in loss spec such as `file.py:Ok:k=2` must not print as `file.py🆗k=2`.
console = Console(file=_QuietStdout(), emoji=False)  # type: ignore[arg-type]
errors = Console(stderr=True, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_OUT = Path("results/runs")

EXIT_USAGE = 2
"""A user mistake (bad option, unknown name, missing data): one line on stderr."""


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def user_errors(fn: F) -> F:
    """Turn ``UserError`` into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise fail(str(err)) from None

    return wrapper  # type: ignore[return-value]


def split_multi(values: Sequence[str]) -> list[str]:
    """Accept both ``--task a --task b`` and ``--task a,b`` (loss specs keep their commas)."""
    return [v for value in values for v in value.split(",") if v.strip()]


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _probe_dir(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there, or raise UserError."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} '{folder}' is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lossbench-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{what} '{folder}' is not writable ({err.strerror or err}); pass a "
                        "folder you can write to") from None


def check_writable_dir(folder: Path, what: str = "--out") -> None:
    """Fail before any work when results could not be saved in ``folder``."""
    _probe_dir(folder, what)


def check_writable_file(path: Path, what: str) -> None:
    """Fail before any work when ``path`` could not be written (a folder, unwritable parent)."""
    if path.is_dir():
        raise UserError(f"{what} '{path}' is a folder; pass a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} '{path}' is not writable; pass a file you can write")
    _probe_dir(path.parent if str(path.parent) else Path("."), f"the folder of {what}")


Results = Annotated[list[Path] | None, typer.Argument(
    help="Results folders or runs tables (.parquet/.csv); default: results/runs.",
    show_default=False, metavar="[RESULTS]...")]
Metric = Annotated[str | None, typer.Option(
    help="Metric (default: each family's primary one, test_top1 for classification).",
    metavar="NAME")]
By = Annotated[str, typer.Option(help="Columns of the comparison: task, noise_rate, budget, "
                                      "family, source, ... (comma-separated).", metavar="COLS")]
