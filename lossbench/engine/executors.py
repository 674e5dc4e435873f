"""Executors run the grid's configs and hand each finished record back to the driver, which alone
writes the store. ``local`` runs in-process (default) or in a process pool (``--workers N``);
``ray`` sends each run to a Ray cluster as a task (optional extra ``lossbench[ray]``)."""

from __future__ import annotations

import gc
import json
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import torch

from lossbench.engine.grid import RunConfig
from lossbench.engine.packed import PACKED_RUNNERS, NotPackable
from lossbench.engine.provenance import device_name, git_commit, now, versions
from lossbench.engine.train import Diverged, resolve_device
from lossbench.errors import UserError
from lossbench.families import FAMILIES, RunContext, RunOutput
from lossbench.families.base import Reporter
from lossbench.models import MODELS
from lossbench.plugins import register_sources

Record = dict[str, Any]


def _record(cfg: RunConfig, dev: torch.device) -> Record:
    return {
        "run_key": cfg.key, "config": cfg.as_dict(), "device": device_name(dev),
        "versions": versions(), "git_commit": git_commit(), "started_at": now(),
        "torch_threads": torch.get_num_threads(),
    }


def _outcome(record: Record, outcome: RunOutput | Exception, wall_s: float) -> Record:
    """Fill a record from what the run produced: outputs, divergence, or a crash."""
    if isinstance(outcome, RunOutput):
        record |= {"status": "ok", "metrics": outcome.metrics, "curves": outcome.curves,
                   "info": outcome.info}
        if outcome.arrays:
            record["arrays"] = outcome.arrays  # Store.write saves them beside the record
    elif isinstance(outcome, Diverged):
        record |= {"status": "diverged", "reason": str(outcome), "metrics": {}}
    else:
        record |= {
            "status": "failed", "reason": f"{type(outcome).__name__}: {outcome}", "metrics": {},
            "traceback": "".join(traceback.format_exception(outcome, limit=8)),
        }
    return record | {"wall_s": round(wall_s, 3), "finished_at": now()}


def run_one(cfg: RunConfig, device: str, report: Reporter | None = None) -> Record:
    """Train and score one config. Divergence and crashes become records; user errors propagate."""
    dev = resolve_device(device)
    torch.set_num_threads(cfg.threads)
    ctx = RunContext(cfg.spec, cfg.loss, cfg.loss_params, cfg.seed, dev, teacher=cfg.teacher)
    if report is not None:
        ctx.report = report
    record = _record(cfg, dev)
    start = time.perf_counter()
    outcome: RunOutput | Exception
    try:
        outcome = FAMILIES.get(cfg.family).factory(ctx)
    except UserError:
        raise
    except Exception as err:  # divergence or a crash ends this run, not the grid
        outcome = err
    return _outcome(record, outcome, time.perf_counter() - start)


def run_group(group: Sequence[RunConfig], device: str) -> list[Record]:
    """Runs of one task and budget, packed into one computation when the family and model allow
    it, else one by one. Each packed record's wall time is the group's time divided evenly.

    A group that runs out of device memory is split in halves and retried, down to single runs,
    so an over-large ``--pack`` (or ``auto``) costs time, never results.
    """
    runner = PACKED_RUNNERS.get(group[0].family)
    if len(group) == 1 or runner is None:
        return [run_one(cfg, device) for cfg in group]
    dev = resolve_device(device)
    torch.set_num_threads(group[0].threads)
    records = [_record(cfg, dev) for cfg in group]
    ctxs = [RunContext(c.spec, c.loss, c.loss_params, c.seed, dev, teacher=c.teacher)
            for c in group]
    start = time.perf_counter()
    retry = ""
    try:
        outcomes: list[RunOutput | Exception] = list(runner(ctxs))
    except NotPackable:
        retry = "one by one"
    except torch.OutOfMemoryError:
        retry = "in halves"  # below, once the traceback no longer holds the members' tensors
    except UserError:
        raise
    except Exception as err:
        outcomes = [err] * len(group)
    if retry == "one by one":
        return [run_one(cfg, device) for cfg in group]
    if retry == "in halves":
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        half = len(group) // 2
        return run_group(group[:half], device) + run_group(group[half:], device)
    share = (time.perf_counter() - start) / len(group)
    return [_outcome(r, o, share) | {"packed": len(group)}
            for r, o in zip(records, outcomes, strict=True)]


AUTO_PACK = {"cpu": 1, "cuda": 16}
"""``--pack auto`` per device type. CPU: 1, because packing measured slower there (digits MLP
grid at pack 8: 0.71x the runs/hour; CIFAR quick model at pack 4: 0.78x the images/s, vmap's
grouped convolutions; benchmarks/RESULTS.md) -- unless the task's model says it is tiny (the
model registry's ``cpu_pack`` tag: the LDR paper's tabular MLPs pack 32 runs, 2.1x the runs/hour
of one by one). CUDA: up to 16 runs, halved by ``run_group`` whenever a group does not fit in
memory (a guess until measured on a GPU)."""


def pack_size(pack: int | str, device: str, model: Mapping[str, Any] | None = None) -> int:
    """``--pack`` value -> runs per packed group on ``device`` (``auto``: ``AUTO_PACK``, or the
    ``model`` table's ``cpu_pack`` hint on a CPU). Read from the device name, not resolved here:
    Ray workers may have a GPU the driver lacks."""
    if pack == "auto":
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kind = device.split(":")[0]
        if kind == "cpu" and model and str(model.get("name")) in MODELS:
            hint = MODELS.get(str(model["name"])).tags.get("cpu_pack")
            if hint is not None:
                return int(hint({k: v for k, v in model.items() if k != "name"}))
        return AUTO_PACK.get(kind, 1)
    size = int(pack) if isinstance(pack, int) or pack.isdigit() else 0
    if size >= 1:
        return size
    raise UserError(f"--pack must be an integer >= 1 or 'auto', got {pack!r}")


def pack_groups(configs: Sequence[RunConfig], pack: int | str, device: str
                ) -> list[list[RunConfig]]:
    """The runs in the groups they train in: consecutive runs sharing family, task, budget and
    spec, and the family's ``pack_key(cfg)`` where it declares one (regression: the split and
    head size; classification with ``split.kfold``: the seed, which picks the fold), at most
    ``pack_size`` per group (one by one when that is 1)."""
    by_spec: dict[str, list[RunConfig]] = {}
    for cfg in configs:
        pack_key = FAMILIES.get(cfg.family).tags.get("pack_key")
        extra = pack_key(cfg) if pack_key else None
        key = json.dumps([cfg.family, cfg.spec, cfg.device, cfg.threads, extra], sort_keys=True,
                         default=str)
        by_spec.setdefault(key, []).append(cfg)
    groups: list[list[RunConfig]] = []
    for runs in by_spec.values():
        size = pack_size(pack, device, runs[0].spec.get("model"))
        groups += [runs[i : i + size] for i in range(0, len(runs), size)]
    return groups


def _pool_worker(group: Sequence[RunConfig], device: str) -> list[Record]:
    register_sources(group)  # plug-in losses, loaded here by reference: nothing is pickled
    return run_group(group, device)


def run_local(
    configs: Sequence[RunConfig],
    device: str,
    workers: int = 1,
    make_reporter: Callable[[RunConfig], Reporter] | None = None,
    pack: int | str = 1,
) -> Iterator[Record]:
    """Yield records as runs finish: in-process for one worker, else a spawn process pool.

    ``pack`` > 1 trains up to that many runs of one task and budget as one packed computation;
    ``auto`` picks the size for the device (``pack_size``).
    """
    groups = pack_groups(configs, pack, device)
    if workers <= 1:
        for group in groups:
            if len(group) == 1:
                yield run_one(group[0], device, make_reporter(group[0]) if make_reporter else None)
            else:
                yield from run_group(group, device)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    futures = [pool.submit(_pool_worker, group, device) for group in groups]
    finished = False
    try:
        for future in as_completed(futures):
            yield from future.result()
        finished = True
    finally:
        if not finished:  # interrupted: a run still training would be lost anyway, stop it now
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(
    configs: Sequence[RunConfig],
    device: str,
    workers: int = 1,
    make_reporter: Callable[[RunConfig], Reporter] | None = None,
    address: str = "local",
    gpus_per_run: float = 0.0,
    pack: int | str = 1,
) -> Iterator[Record]:
    """Each run (or packed group of ``pack`` runs) is a Ray task; records come back to the
    driver as tasks finish.

    ``address``: ``local`` starts a private instance on this machine (``workers`` CPUs),
    ``auto`` joins the running cluster, ``ray://host:port`` a remote one. ``gpus_per_run`` may
    be fractional, so several small runs share one GPU (a packed group takes one task's share).
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
    groups = pack_groups(configs, pack, device)
    pending = [remote.remote(group, device) for group in groups]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield from ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, UserError):
                    raise err.cause from None
                raise
    finally:
        for ref in pending:
            ray.cancel(ref)


EXECUTORS: dict[str, Callable[..., Iterator[Record]]] = {"local": run_local, "ray": run_ray}
