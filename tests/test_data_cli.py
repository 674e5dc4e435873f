"""`lossbench data list / get`: the catalogue, and downloads served by a local http.server on
127.0.0.1 through --mirror (success, checksum mismatch, truncated transfer, server error,
interrupted download then retry). No test reaches any other address."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data import catalog, download, locate
from lossbench.data.catalog import DATASETS, DataFile, Dataset
from lossbench.errors import UserError
from lossbench.spec import load_task, task_names

runner = CliRunner()
ORIGIN = "https://data.example.org"
"""The catalogue's (fake) official host: only ever reached through the local mirror."""


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory``; ``behaviour[path]`` makes a path fail: ``"500"`` answers a server
    error, ``"truncate"`` announces the full length and closes after half of it."""

    behaviour: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        mode = self.behaviour.get(self.path)
        if mode == "500":
            self.send_error(500, "Internal Server Error")
            return
        if mode == "truncate":
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """(folder served, mirror URL, behaviour map) of a server on 127.0.0.1 in a thread."""
    root = tmp_path / "served"
    root.mkdir()
    behaviour: dict[str, str] = {}
    handler = type("H", (Handler,), {"behaviour": behaviour})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", behaviour
    finally:
        server.shutdown()
        server.server_close()


def toy_files(contents: dict[str, bytes], checksum: bool = True) -> tuple[DataFile, ...]:
    return tuple(DataFile(path, len(data), hashlib.sha256(data).hexdigest() if checksum else "",
                          "", "", f"{ORIGIN}/toy/{path}") for path, data in contents.items())


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A catalogue with one data set 'toy' of two files (one in a subfolder) and one derived."""
    contents = {"a.txt": b"alpha\n" * 1000, "sub/b.bin": bytes(range(256)) * 300}
    files = (*toy_files(contents), DataFile("made-here.csv", 3, "00" * 32, "", "", ""))
    monkeypatch.setattr(catalog, "DATASETS", {"toy": Dataset(
        "toy", "a toy set", "CC0", ("toy-task",), (("a.txt",), ("sub/b.bin",)), "made up")})
    monkeypatch.setattr(catalog, "_files", lambda: {"toy": files})
    return contents


def serve(root: Path, contents: dict[str, bytes]) -> None:
    for path, data in contents.items():
        (root / "toy" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "toy" / path).write_bytes(data)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def get(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["data", "get", *args])
    return result.exit_code, result.output


def test_the_data_commands_import_without_torch_or_numpy() -> None:
    code = ("import sys, lossbench.commands.data; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def test_mirror_url_replaces_scheme_and_host_only() -> None:
    url = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/vowel.scale"
    assert download.mirror_url(url, "") == url
    assert (download.mirror_url(url, "http://127.0.0.1:8080/cache/") ==
            "http://127.0.0.1:8080/cache/~cjlin/libsvmtools/datasets/multiclass/vowel.scale")
    with pytest.raises(UserError, match="bad mirror"):
        download.mirror_url(url, "127.0.0.1:8080")


def test_get_downloads_verifies_and_skips_what_is_there(
        served: tuple[Path, str, dict[str, str]], toy: dict[str, bytes], tmp_path: Path) -> None:
    root, mirror, _ = served
    serve(root, toy)
    code, out = get("toy", "--to", str(tmp_path / "dest"), "--mirror", mirror)
    assert code == 0, out
    for path, data in toy.items():
        assert (tmp_path / "dest" / path).read_bytes() == data
    assert out.count(": verified") == 2 and "made-here.csv" in out
    assert f"--set data.dir={tmp_path / 'dest'}" in " ".join(out.split())
    assert leftovers(tmp_path / "dest") == ["a.txt", "b.bin"]  # no part files
    code, out = get("toy", "--to", str(tmp_path / "dest"), "--mirror", mirror)
    assert code == 0 and "already there: a.txt, sub/b.bin" in out


def test_get_defaults_to_lossbench_data_and_the_mirror_variable(
        served: tuple[Path, str, dict[str, str]], toy: dict[str, bytes], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root, mirror, _ = served
    serve(root, toy)
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path / "home"))
    monkeypatch.setenv("LOSSBENCH_MIRROR", mirror)
    code, out = get("toy")
    assert code == 0, out
    assert (tmp_path / "home" / "toy" / "sub" / "b.bin").read_bytes() == toy["sub/b.bin"]
    assert locate.find_dataset("toy", ["a.txt", "sub/b.bin"]) == tmp_path / "home" / "toy"


def test_checksum_mismatch_is_refused_and_nothing_is_written(
        served: tuple[Path, str, dict[str, str]], toy: dict[str, bytes], tmp_path: Path) -> None:
    root, mirror, _ = served
    serve(root, {**toy, "sub/b.bin": b"tampered" + toy["sub/b.bin"][8:]})
    code, out = get("toy", "--to", str(tmp_path / "dest"), "--mirror", mirror)
    assert code == 2
    lines = [line for line in out.splitlines() if "error" in line]
    assert len(lines) == 1 and "checksum mismatch for sub/b.bin" in lines[0]
    assert "refused" in " ".join(out.split())
    assert leftovers(tmp_path / "dest") == ["a.txt"]  # the good file; no b.bin, no part file


def test_truncated_transfer_leaves_nothing(
        served: tuple[Path, str, dict[str, str]], toy: dict[str, bytes], tmp_path: Path) -> None:
    root, mirror, behaviour = served
    serve(root, toy)
    behaviour["/toy/a.txt"] = "truncate"
    code, out = get("toy", "--to", str(tmp_path / "dest"), "--mirror", mirror)
    assert code == 2 and "cut short" in out and "Traceback" not in out
    assert leftovers(tmp_path / "dest") == []


def test_server_error_is_one_line(
        served: tuple[Path, str, dict[str, str]], toy: dict[str, bytes], tmp_path: Path) -> None:
    root, mirror, behaviour = served
    serve(root, toy)
    behaviour["/toy/a.txt"] = "500"
    code, out = get("toy", "--to", str(tmp_path / "dest"), "--mirror", mirror)
    assert code == 2 and "HTTP 500" in out and "nothing was written" in " ".join(out.split())
    assert leftovers(tmp_path / "dest") == []


def test_interrupted_download_leaves_nothing_and_a_retry_completes(
        served: tuple[Path, str, dict[str, str]], toy: dict[str, bytes], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root, mirror, _ = served
    serve(root, toy)

    class Interrupting(Progress):
        """Ctrl-C at the third progress update: within a.txt (6 KB, read 1 KB at a time)."""

        calls = 0

        def update(self, *args: object, **kwargs: object) -> None:
            Interrupting.calls += 1
            if Interrupting.calls == 3:
                raise KeyboardInterrupt
            super().update(*args, **kwargs)  # type: ignore[arg-type]

    chunk, bar = download.CHUNK, download.progress_bar
    monkeypatch.setattr(download, "CHUNK", 1024)
    monkeypatch.setattr(download, "progress_bar", lambda console: Interrupting(console=console))
    dest = tmp_path / "dest"
    with pytest.raises(KeyboardInterrupt):
        download.get(catalog.get("toy"), dest, mirror, Console(quiet=True))
    assert Interrupting.calls == 3 and leftovers(dest) == []  # no a.txt, no part file
    monkeypatch.setattr(download, "CHUNK", chunk)
    monkeypatch.setattr(download, "progress_bar", bar)
    code, out = get("toy", "--to", str(dest), "--mirror", mirror)
    assert code == 0, out
    assert (dest / "a.txt").read_bytes() == toy["a.txt"]


def test_a_file_without_checksum_is_fetched_but_reported_unverified(
        served: tuple[Path, str, dict[str, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root, mirror, _ = served
    serve(root, {"a.txt": b"x"})
    monkeypatch.setattr(catalog, "DATASETS", {"toy": Dataset("toy", "t", "CC0", (), (), "")})
    monkeypatch.setattr(catalog, "_files", lambda: {"toy": toy_files({"a.txt": b"x"}, False)})
    code, out = get("toy", "--to", str(tmp_path / "d"), "--mirror", mirror)
    assert code == 0 and "not verified (no recorded checksum)" in out


def test_list_shows_status_size_checksum_and_command(
        toy: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "toy" in line)
    assert "missing" in row and "lossbench data get toy" in row
    for path, data in toy.items():
        (tmp_path / "home" / "toy" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "home" / "toy" / path).write_bytes(data)
    row = next(line for line in runner.invoke(app, ["data", "list"]).output.splitlines()
               if "toy" in line)
    assert "$LOSSBENCH_DATA" in row and "verified (2 files)" in row
    assert "82.8 KB" in row  # 6,000 + 76,800 bytes
    (tmp_path / "home" / "toy" / "a.txt").write_bytes(b"changed")
    row = next(line for line in runner.invoke(app, ["data", "list"]).output.splitlines()
               if "toy" in line)
    assert "MISMATCH: a.txt" in row


def test_derived_only_and_unknown_sets_explain_in_one_line() -> None:
    code, out = get("statlog")
    assert code == 2 and "r-cran-mlbench" in out and "no download" in out
    code, out = get("imagenet")
    assert code == 2 and "unknown data set 'imagenet'; accepted: fashion-mnist" in out


def test_missing_data_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--loss", "ce", "--task", "letter-noisy", "--budget",
                                 "smoke", "--device", "cpu", "--set",
                                 f"data.dir={tmp_path / 'empty'}", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "data set 'letter' not found" in text and "lossbench data get letter" in text
    assert not (out / "records").exists()  # no run started


# --- The catalogue itself ----------------------------------------------------------------------


def test_catalogue_covers_every_task_on_a_catalogued_source() -> None:
    by_source = {"fashion-mnist": "fashion-mnist", "mnist": "mnist", "letter": "letter",
                 "vowel": "vowel", "uci": "UCI_Datasets"}
    by_source |= {f"statlog-{n}": "statlog" for n in
                  ("satimage", "shuttle", "dna", "vehicle", "glass")}
    by_source["tinyshakespeare"] = "tinyshakespeare"  # lm tasks name a data.corpus
    for task in task_names():
        data = load_task(task)["data"]
        source = data.get("source", data.get("corpus"))
        if source in by_source:
            assert task in DATASETS[by_source[source]].tasks, task
    for dataset in DATASETS.values():
        assert set(dataset.tasks) <= set(task_names()), dataset.name


def test_every_catalogue_file_has_a_url_or_a_checksum_and_needs_are_listed() -> None:
    for dataset in DATASETS.values():
        paths = {f.path for f in dataset.files}
        assert paths, dataset.name
        for group in dataset.needs:
            assert paths & set(group), (dataset.name, group)
        for f in dataset.files:
            assert f.url or f.sha256, f.path  # derived files carry their recorded checksum
            assert len(f.sha256) in (0, 64) and len(f.md5) in (0, 32)
            assert not f.url or f.url.startswith(("https://", "http://fashion-mnist.s3"))


SHARED = locate.SHARED_DATA


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
@pytest.mark.parametrize("name", ["fashion-mnist", "letter", "vowel", "UCI_Datasets", "statlog",
                                  "tinyshakespeare"])
def test_shared_copies_match_the_recorded_checksums(name: str) -> None:
    status = catalog.status(DATASETS[name])
    if status.root is None:
        pytest.skip(f"../shared/data/{name} is absent")
    assert status.checks and set(status.checks.values()) == {"verified"}, status.summary
