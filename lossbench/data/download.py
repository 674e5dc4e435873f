"""``lossbench data get``: fetch a catalogue data set from its official URLs, verify, write
atomically.

Each file streams into a hidden ``.<name>.<random>.part`` file beside its destination while its
sha256 and MD5 are computed; only a complete transfer (as long as the server announced) whose
checksum matches the catalogue is renamed into place (``os.replace``, atomic on one file
system). A failure of any kind -- server error, refused connection, cut transfer, checksum
mismatch, Ctrl-C -- deletes the part file, so nothing that looks complete is ever left behind,
and a retry starts afresh. ``--mirror`` (or ``$LOSSBENCH_MIRROR``) replaces the scheme and host
of every URL, keeping the path, for users behind a proxy or with a local copy. Standard library
and Rich only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lossbench.data.catalog import DataFile, Dataset, check_file
from lossbench.data.locate import data_home
from lossbench.errors import UserError, require

CHUNK = 1 << 16
TIMEOUT_S = 60.0


def mirror_url(url: str, mirror: str) -> str:
    """``url`` with its scheme and host replaced by ``mirror``'s (a path prefix of the mirror is
    kept before the original path); unchanged when ``mirror`` is empty."""
    if not mirror:
        return url
    base = urllib.parse.urlsplit(mirror)
    require(base.scheme in ("http", "https") and bool(base.netloc),
            f"bad mirror {mirror!r}; expected http(s)://host[:port][/prefix]")
    original = urllib.parse.urlsplit(url)
    path = base.path.rstrip("/") + original.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, original.query, ""))


@dataclass
class Fetched:
    """One downloaded file: where it went and whether a checksum vouched for it."""

    path: Path
    verified: bool


@contextlib.contextmanager
def part_file(dest: Path) -> Iterator[Path]:
    """A fresh hidden part file beside ``dest``, deleted on the way out unless renamed."""
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        yield part
    finally:
        part.unlink(missing_ok=True)


def _open(url: str) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "lossbench-data-get"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise UserError(f"download failed: {url} answered HTTP {err.code} {err.reason}; "
                        "nothing was written (retry later, or use --mirror)") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"download failed: cannot reach {url} ({reason}); nothing was written "
                        "(check the connection, or use --mirror / $LOSSBENCH_MIRROR)") from None


def _matches(spec: DataFile, sha256: str, md5: str, part: Path) -> bool:
    if (spec.sha256 and sha256 == spec.sha256) or (spec.md5 and md5 == spec.md5):
        return True
    if spec.gunzip_sha256:
        content = hashlib.sha256()
        with contextlib.suppress(OSError, EOFError), gzip.open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                content.update(block)
            return content.hexdigest() == spec.gunzip_sha256
    return False


def fetch_file(spec: DataFile, dest: Path, mirror: str, progress: Progress) -> Fetched:
    """Download ``spec`` to ``dest`` (see the module docstring); a one-line ``UserError`` on any
    failure, with nothing left at ``dest`` that was not there before."""
    url = mirror_url(spec.url, mirror)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with part_file(dest) as part, _file_task(progress, spec.path) as task:
        response = _open(url)
        with response:
            announced = response.headers.get("Content-Length")
            total = int(announced) if announced and announced.isdigit() else None
            progress.update(task, total=total or spec.size or None)
            sha, md5, received = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
            try:
                with part.open("wb") as out:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        sha.update(chunk)
                        md5.update(chunk)
                        received += len(chunk)
                        progress.update(task, advance=len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
                raise UserError(f"download of {url} was cut short ({type(err).__name__}); "
                                "nothing was written, run the command again") from None
        if total is not None and received != total:
            raise UserError(f"download of {url} was cut short: {received} of {total} bytes; "
                            "nothing was written, run the command again")
        if spec.has_checksum and not _matches(spec, sha.hexdigest(), md5.hexdigest(), part):
            expected = spec.sha256 or spec.md5 or spec.gunzip_sha256
            raise UserError(f"checksum mismatch for {spec.path} from {url}: got sha256 "
                            f"{sha.hexdigest()[:16]}..., expected {expected[:16]}...; refused, "
                            "nothing was written")
        os.replace(part, dest)
    return Fetched(dest, spec.has_checksum)


@contextlib.contextmanager
def _file_task(progress: Progress, name: str) -> Iterator[TaskID]:
    """A bar for one file, removed when the file is done (a set may have hundreds of files)."""
    task = progress.add_task(name, total=None)
    try:
        yield task
    finally:
        progress.remove_task(task)


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console)


@dataclass
class GetReport:
    """What ``get`` did: files fetched, already there, and derived files it could not fetch."""

    folder: Path
    fetched: list[Fetched]
    present: list[str]
    derived: list[str]


def get(dataset: Dataset, to: Path | None, mirror: str, console: Console) -> GetReport:
    """Fetch every downloadable file of ``dataset`` into ``to`` (default
    ``$LOSSBENCH_DATA/<name>``), skipping files already there (a file whose checksum does not
    match is fetched again)."""
    folder = to.expanduser() if to is not None else data_home() / dataset.name
    downloadable = [f for f in dataset.files if not f.derived]
    derived = [f.path for f in dataset.files if f.derived]
    if not downloadable:
        raise UserError(f"data set '{dataset.name}' has no download: {dataset.origin}")
    report = GetReport(folder, [], [], derived)
    with progress_bar(console) as progress:
        overall = progress.add_task(f"{dataset.name} ({len(downloadable)} files)",
                                    total=sum(f.size for f in downloadable) or None)
        for spec in downloadable:
            dest = folder / spec.path
            if check_file(dest, spec) in ("verified", "unverified"):  # never partial: atomic
                report.present.append(spec.path)
            else:
                report.fetched.append(fetch_file(spec, dest, mirror, progress))
            progress.update(overall, advance=spec.size)
    return report
