"""The data lookup order: data.dir alone, then $LOSSBENCH_DATA/<name>, the shared folder, Debian."""

from pathlib import Path

import pytest

from lossbench.data import locate
from lossbench.errors import UserError


def _make(root: Path, *files: str) -> Path:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    return root


def test_explicit_dir_is_the_only_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path / "home"))
    _make(tmp_path / "home" / "letter", "a.txt")
    assert locate.find_dataset("letter", ["a.txt"], dir=str(tmp_path / "mine")) is None
    mine = _make(tmp_path / "mine", "a.txt")
    assert locate.find_dataset("letter", ["a.txt"], dir=str(mine)) == mine


def test_data_home_before_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path / "home"))
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "shared")
    shared = _make(tmp_path / "shared" / "vowel", "v.scale")
    assert locate.find_dataset("vowel", ["v.scale"]) == shared
    home = _make(tmp_path / "home" / "vowel", "v.scale")
    assert locate.find_dataset("vowel", ["v.scale"]) == home
    assert locate.find_dataset("vowel", ["v.scale", "missing"]) is None


def test_default_home_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOSSBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert locate.data_home() == tmp_path / "lossbench" / "data"


def test_debian_path_last(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(locate, "DEBIAN_PATHS", {"fashion-mnist": tmp_path / "deb"})
    roots = locate.search_roots("fashion-mnist")
    assert roots[-1] == tmp_path / "deb" and len(roots) == 3


def test_missing_names_the_get_command() -> None:
    err = locate.missing_data("letter", ["letter.csv"], dir="/nowhere")
    assert isinstance(err, UserError)
    assert "lossbench data get letter" in str(err) and "/nowhere" in str(err)
    assert "\n" not in str(err)
