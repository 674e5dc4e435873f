"""The in-process source cache and the exact image statistics that made per-run data
preparation cheap (CIFAR: ~5 s -> ~0.5 s a run on the dev box)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossbench.data import sources
from lossbench.data.sources import load_source
from lossbench.data.views import channel_stats


def test_a_source_is_built_once_read_only_with_its_own_meta(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    built: list[str] = []
    real = sources.SOURCES.get

    def counting(name: str):  # type: ignore[no-untyped-def]
        built.append(name)
        return real(name)

    monkeypatch.setattr(sources.SOURCES, "get", counting)
    first = load_source({"source": "sklearn-digits"})
    first.meta["note"] = "changed by one run"
    second = load_source({"source": "sklearn-digits"})
    assert len(built) == 1
    assert second.x_train is first.x_train and "note" not in second.meta
    with pytest.raises(ValueError, match="read-only"):
        second.x_train[0, 0] = 1.0
    load_source({"source": "sklearn-digits", "split_seed": 1})  # other options: another entry
    assert len(built) == 2


def test_the_cache_keeps_the_last_few_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CACHE_SIZE", 2)
    for seed in range(3):
        load_source({"source": "sklearn-digits", "split_seed": seed})
    assert len(sources._cache) == 2


def test_channel_stats_are_exact() -> None:
    x = np.random.default_rng(0).integers(0, 256, (300, 3, 7, 5), dtype=np.uint8)
    mean, std = channel_stats(x)
    pixels = torch.tensor(x, dtype=torch.float64) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(dim=(0, 2, 3)).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, pixels.std(dim=(0, 2, 3)).numpy(), rtol=0, atol=1e-12)


def test_channel_stats_of_a_cached_source_are_computed_once(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Read-only (cached-source) arrays: computed once while the array lives, then forgotten;
    writable arrays, whose bytes may change, are computed every time."""
    import gc

    from lossbench.data import views

    calls: list[int] = []
    real = views.channel_stats

    def counting(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(id(images))
        return real(images)

    monkeypatch.setattr(views, "channel_stats", counting)
    x = np.random.default_rng(1).integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    writable = views.source_channel_stats(x), views.source_channel_stats(x)
    assert len(calls) == 2
    x.setflags(write=False)
    first, again = views.source_channel_stats(x), views.source_channel_stats(x)
    assert len(calls) == 3 and again is first
    np.testing.assert_array_equal(first[0], writable[0][0])
    np.testing.assert_array_equal(first[1], real(x)[1])
    key = id(x)
    del x
    gc.collect()
    assert key not in views._stats_of
