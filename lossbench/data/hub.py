"""Hugging Face ``datasets`` without waiting on an unreachable hub.

``datasets.load_dataset`` retries a hub it cannot reach with back-off (85 s on an offline
machine before it gives up). lossbench looks in the local cache first, with the hub switched
off, and goes online only when the hub answers a quick connection probe and ``HF_HUB_OFFLINE``
is not set; otherwise the caller's one-line error comes at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class HubUnavailable(Exception):
    """Not in the local cache, and the hub is off or out of reach; ``str()`` says which."""


@contextmanager
def _offline() -> Iterator[None]:
    """Hub access off for ``datasets`` and ``huggingface_hub`` (both read their flag at call
    time), then back as it was."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's endpoint opens within ``timeout``. Behind a proxy
    the probe cannot tell, so the hub counts as reachable and ``datasets`` decides."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    import huggingface_hub.constants as hub_constants

    url = urlparse(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def load_hf_dataset(hf_id: str, cache_dir: str = "") -> Any:
    """``datasets.load_dataset(hf_id)``: from the local cache, else from the hub when it is
    allowed and reachable. Raises ``HubUnavailable`` (with the reason) otherwise."""
    import datasets
    import huggingface_hub.constants as hub_constants

    try:
        with _offline():
            return datasets.load_dataset(hf_id, cache_dir=cache_dir or None)
    except (OSError, ValueError) as err:  # not cached: ConnectionError, FileNotFoundError, ...
        cached_error = " ".join(f"{type(err).__name__}: {err}".split())[:160]
    if hub_constants.HF_HUB_OFFLINE:
        raise HubUnavailable(f"not in the local HF cache and HF_HUB_OFFLINE is set "
                             f"({cached_error})")
    if not hub_reachable():
        raise HubUnavailable(f"not in the local HF cache and {hub_constants.ENDPOINT} is "
                             f"unreachable ({cached_error})")
    try:
        return datasets.load_dataset(hf_id, cache_dir=cache_dir or None)
    except (OSError, ValueError) as err:  # DatasetNotFoundError, a dropped connection, ...
        raise HubUnavailable(" ".join(f"{type(err).__name__}: {err}".split())[:200]) from None
