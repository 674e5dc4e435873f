"""Test session settings: one torch thread per process, so test timings do not collapse when
the machine's two cores are shared (several test processes, or other work); no source cache
carried from one test to the next; grids run in-process unless a test asks for workers; an empty
``$LOSSBENCH_DATA``, so a developer's downloads never decide a test (``../shared/data`` is still
found, as in CI)."""

import os

import pytest
import torch

from lossbench.data.sources import clear_source_cache

torch.set_num_threads(1)
os.environ["LOSSBENCH_WORKERS"] = "1"  # in-process runs; tests of --workers pass it explicitly


@pytest.fixture(autouse=True)
def empty_data_home(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``$LOSSBENCH_DATA`` points at an empty folder (tests that download set their own)."""
    monkeypatch.setenv("LOSSBENCH_DATA", str(tmp_path_factory.getbasetemp() / "data-home"))


@pytest.fixture(autouse=True)
def fresh_sources() -> None:
    """Tests swap the files behind one ``[data]`` table (fixtures, shared-data fallbacks): each
    test starts without the in-process source cache."""
    clear_source_cache()
