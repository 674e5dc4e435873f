"""Executors run the grid's configs and hand each finished record back to the driver, which alone
writes the store. ``local`` runs in-process (default) or in a process pool (``--workers N``);
``ray`` sends each run to a Ray cluster as a task (optional extra ``lossbench[ray]``)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from typing import Any

import torch

from lossbench.engine.grid import RunConfig
from lossbench.engine.provenance import device_name, git_commit, now, versions
from lossbench.engine.train import Diverged, resolve_device
from lossbench.errors import UserError
from lossbench.families import FAMILIES, RunContext
from lossbench.families.base import Reporter

Record = dict[str, Any]


def run_one(cfg: RunConfig, device: str, report: Reporter | None = None) -> Record:
    """Train and score one config. Divergence and crashes become records; user errors propagate."""
    dev = resolve_device(device)
    ctx = RunContext(cfg.spec, cfg.loss, cfg.loss_params, cfg.seed, dev)
    if report is not None:
        ctx.report = report
    start = time.perf_counter()
    record: Record = {
        "run_key": cfg.key, "config": asdict(cfg), "device": device_name(dev),
        "versions": versions(), "git_commit": git_commit(), "started_at": now(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        out = FAMILIES.get(cfg.family).factory(ctx)
        record |= {"status": "ok", "metrics": out.metrics, "curves": out.curves, "info": out.info}
    except Diverged as err:
        record |= {"status": "diverged", "reason": str(err), "metrics": {}}
    except UserError:
        raise
    except Exception as err:  # a crash in one run must not take the grid down
        record |= {
            "status": "failed", "reason": f"{type(err).__name__}: {err}", "metrics": {},
            "traceback": traceback.format_exc(limit=8),
        }
    record |= {"wall_s": round(time.perf_counter() - start, 3), "finished_at": now()}
    return record


def _pool_worker(cfg: RunConfig, device: str, threads: int) -> Record:
    torch.set_num_threads(threads)
    return run_one(cfg, device)


def run_local(
    configs: Sequence[RunConfig],
    device: str,
    workers: int = 1,
    make_reporter: Callable[[RunConfig], Reporter] | None = None,
) -> Iterator[Record]:
    """Yield records as runs finish: in-process for one worker, else a spawn process pool."""
    if workers <= 1:
        for cfg in configs:
            yield run_one(cfg, device, make_reporter(cfg) if make_reporter else None)
        return
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_pool_worker, cfg, device, threads) for cfg in configs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def run_ray(
    configs: Sequence[RunConfig],
    device: str,
    workers: int = 1,
    make_reporter: Callable[[RunConfig], Reporter] | None = None,
    address: str = "local",
    gpus_per_run: float = 0.0,
) -> Iterator[Record]:
    """Each run is a Ray task; records come back to the driver as tasks finish.

    ``address``: ``local`` starts a private instance on this machine (``workers`` CPUs),
    ``auto`` joins the running cluster, ``ray://host:port`` a remote one. ``gpus_per_run`` may
    be fractional, so several small runs share one GPU.
    """
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'lossbench[ray]'") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_run)(_pool_worker)
    pending = [remote.remote(cfg, device, 1) for cfg in configs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, UserError):
                    raise err.cause from None
                raise
    finally:
        for ref in pending:
            ray.cancel(ref)


EXECUTORS: dict[str, Callable[..., Iterator[Record]]] = {"local": run_local, "ray": run_ray}
