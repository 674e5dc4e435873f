"""Hugging Face loading looks in the local cache first and never waits on an unreachable hub.
No test reaches the internet: the hub endpoint is pointed at 127.0.0.1."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub.constants as hub_constants
import pytest
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data import hub, locate


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``datasets.load_dataset`` that has nothing cached: it fails offline, and records online
    calls (which return a stand-in)."""
    calls: list[str] = []

    def load_dataset(path: str, **kwargs: Any) -> Any:
        if datasets.config.HF_HUB_OFFLINE:
            calls.append("cache")
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")
        calls.append("hub")
        return {"train": [], "test": []}

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for var in hub.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return calls


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cache_first_and_flags_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, **kw: seen.append(datasets.config.HF_HUB_OFFLINE) or "dsd")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    assert hub.load_hf_dataset("uoft-cs/cifar10") == "dsd"
    assert seen == [True] and datasets.config.HF_HUB_OFFLINE is False


def test_unreachable_hub_fails_at_once(fake_hub: list[str], monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailable, match="unreachable"):
        hub.load_hf_dataset("uoft-cs/cifar10")
    assert time.perf_counter() - start < hub.PROBE_TIMEOUT_S + 1
    assert fake_hub == ["cache"]


def test_hf_hub_offline_is_honoured(fake_hub: list[str], monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: pytest.fail("probed while offline"))
    with pytest.raises(hub.HubUnavailable, match="HF_HUB_OFFLINE"):
        hub.load_hf_dataset("uoft-cs/cifar10")
    assert fake_hub == ["cache"]


def test_a_reachable_hub_is_used(fake_hub: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(hub_constants, "ENDPOINT",
                            f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.load_hf_dataset("uoft-cs/cifar10") == {"train": [], "test": []}
    assert fake_hub == ["cache", "hub"]


def test_cli_offline_error_is_quick_and_one_line(
    fake_hub: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(locate, "SHARED_DATA", tmp_path / "no-shared-data")
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", "--loss", "ce", "--task", "cifar100-noisy",
                                      "--budget", "smoke", "--device", "cpu", "--seeds", "0",
                                      "--out", str(tmp_path / "out")])
    assert time.perf_counter() - start < 15
    assert result.exit_code == 2 and "CIFAR-100 not found" in result.output
    assert "unreachable" in result.output and "Traceback" not in result.output
