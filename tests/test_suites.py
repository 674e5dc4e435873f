"""Suites: the shipped ones load and resolve; bad suite files are one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lossbench import suites
from lossbench.errors import UserError
from lossbench.spec import resolve_task


def test_shipped_suites_resolve() -> None:
    assert {"ldr-tabular", "noisy-images-cpu", "uci"} <= set(suites.suite_names())
    ldr = suites.load_suite("ldr-tabular")
    assert len(ldr.settings) == 14 and "ldr" in ldr.losses
    for name in suites.suite_names():
        for setting in suites.load_suite(name).settings:
            spec = resolve_task(setting.task, "smoke", setting.overrides)
            assert spec["task"] == setting.task


@pytest.mark.parametrize(("text", "message"), [
    ("", "has no [[setting]] entries"),
    ("[[setting]]\nlabel = 'x'\n", "needs task"),
    ("[[setting]]\ntask = 'digits'\nset = 'noise.rate=0.2'\n", "must be a list of strings"),
    ("[[setting]]\ntask = 'digits'\nfoo = 1\n", "unknown key(s) foo"),
    ("bar = 1\n[[setting]]\ntask = 'digits'\n", "unknown key(s) bar"),
    ("[[setting]]\ntask = 'digits'\nlabel = 'a'\n[[setting]]\ntask = 'digits'\nlabel = 'a'\n",
     "used twice"),
    ("[[setting]\n", "cannot be read"),
])
def test_bad_suite_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                         message: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    monkeypatch.setattr(suites, "suite_dirs", lambda: [tmp_path])
    with pytest.raises(UserError, match=re.escape(message)):
        suites.load_suite("bad")
    with pytest.raises(UserError, match="unknown suite 'nope'; accepted: bad"):
        suites.load_suite("nope")
