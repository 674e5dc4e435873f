"""Equal-budget hyper-parameter tuning, by validation only.

Each loss declares its search space in its registry entry (``space=``): a mapping parameter ->
values (their product), or a list of points (joint values, such as NCE+RCE's ``beta = 10 -
alpha``). Where the LDR paper's code tunes a loss, the space is its grid (``parameter_set`` in
Optimization-AI/ICML2023_LDR experiment.py: LDR/ALDR lambda, GCE q and CS/WW margins in three
values each, SCE's balance, NCE+RCE's alpha with beta = 10 - alpha). ``--space
loss.param=v1,v2`` replaces a loss's declared values for one parameter.
Every tuned loss gets the same number of trials (``--trials``, default the largest space among
them; a larger space is subsampled by a fixed generator, a smaller one is tried whole), and a
parameter the user fixed in the loss spec is not tuned.

A trial is an ordinary run -- its own record and key, resumable -- at one point of the space;
every point is run at every seed of the grid. Per setting and loss the point with the best mean
*validation* criterion over the seeds wins (classification: ``best_val_top1``, the noisy
validation top-1 at the selected epoch; regression: ``best_val_rmse``; lm: ``best_val_ce``);
with ``split.kfold`` the seeds are the folds, so this is k-fold cross-validation. Test metrics
are never read. The chosen point's runs are the final runs: selection and evaluation share them,
as the LDR code does (its 5 fold models are scored on the test set). A point whose runs diverged
or failed counts as the worst. The choice is written to ``<out>/tuning/<id>.json`` (the points,
their run keys and criterion values, the chosen point), and reports mark the chosen runs
(``tuned`` column).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lossbench.errors import require

if TYPE_CHECKING:
    from lossbench.engine.grid import RunConfig
    from lossbench.engine.store import Store
    from lossbench.registry import Entry

Point = dict[str, Any]
TUNING_DIR = "tuning"


def declared_space(entry: Entry[Any]) -> list[Point]:
    """The entry's ``space`` tag as a list of points (``[{}]`` when it declares none)."""
    space = entry.tags.get("space")
    if space is None:
        return [{}]
    if isinstance(space, Mapping):
        names = list(space)
        return [dict(zip(names, values, strict=True))
                for values in itertools.product(*(space[n] for n in names))]
    return [dict(point) for point in space]


def parse_space_option(text: str) -> tuple[str, str, list[str]]:
    """``--space gce.q=0.05,0.7,0.95`` -> ("gce", "q", ["0.05", "0.7", "0.95"])."""
    target, eq, values = text.partition("=")
    loss, dot, param = target.strip().rpartition(".")
    items = [v.strip() for v in values.split(",") if v.strip()]
    require(bool(eq) and bool(dot) and bool(loss) and bool(param) and bool(items),
            f"bad --space {text!r}; expected loss.param=v1,v2,... (e.g. gce.q=0.05,0.7,0.95)")
    return loss, param, items


def space_for(entry: Entry[Any], fixed: Mapping[str, Any],
              overrides: Mapping[str, Sequence[str]]) -> list[Point]:
    """The points tried for ``entry``: its declared space with ``--space`` values replacing a
    parameter's, parameters fixed in the loss spec left out, duplicates removed, values
    checked by the registry (so a bad value is a one-line error before any run)."""
    for name in overrides:
        entry.param(name)  # unknown parameter -> UserError naming the accepted ones
    points = declared_space(entry)
    for name, values in overrides.items():
        points = [p | {name: v} for p in _without(points, name) for v in values]
    points = [_without_keys(p, fixed) for p in points]
    from lossbench.registry import check_params

    unique: list[Point] = []
    seen: list[dict[str, Any]] = []
    for point in points:
        resolved = check_params(entry, {**fixed, **point})  # probe-built: range errors now
        if resolved not in seen:
            seen.append(resolved)
            unique.append(point)
    return unique


def _without(points: list[Point], name: str) -> list[Point]:
    seen: list[Point] = []
    for p in points:
        q = {k: v for k, v in p.items() if k != name}
        if q not in seen:
            seen.append(q)
    return seen


def _without_keys(point: Point, keys: Mapping[str, Any]) -> Point:
    return {k: v for k, v in point.items() if k not in keys}


def equal_budget(points: list[Point], trials: int, loss: str) -> list[Point]:
    """At most ``trials`` points: a larger space is subsampled by a generator seeded by the loss
    name (the same subsample every time), in declared order."""
    if len(points) <= trials:
        return points
    keep = sorted(random.Random(f"lossbench-tuning:{loss}").sample(range(len(points)), trials))
    return [points[i] for i in keep]


def tuned_specs(specs: Sequence[str], space_options: Sequence[str], trials: int | None
                ) -> list[str]:
    """``--loss`` specs -> one spec per trial point, every tuned loss at the same budget (see the
    module docstring). A plug-in loss (not in the registry) is kept as one point."""
    from lossbench.losses import LOSSES
    from lossbench.registry import parse_spec

    overrides: dict[str, dict[str, list[str]]] = {}
    for text in space_options:
        loss, param, values = parse_space_option(text)
        overrides.setdefault(loss, {})[param] = values
    require(trials is None or trials >= 1, f"--trials must be >= 1, got {trials}")
    plans: list[tuple[str, dict[str, str], list[Point]]] = []
    kept: list[str] = []
    for text in specs:
        name, raw = parse_spec(text)
        require(name != "all", "--tune needs the losses named: 'all' has no single search "
                               "space; list them (or use a suite's losses)")
        if name not in LOSSES:
            kept.append(text)
            continue
        plans.append((name, raw, space_for(LOSSES.get(name), raw, overrides.get(name, {}))))
    unknown = sorted(set(overrides) - {name for name, _, _ in plans})
    require(not unknown, f"--space names {', '.join(unknown)}, which no --loss tunes")
    budget = trials or max((len(points) for _, _, points in plans), default=1)
    return kept + [spec_text(name, {**raw, **point}) for name, raw, points in plans
                   for point in equal_budget(points, budget, name)]


def spec_text(name: str, params: Mapping[str, Any]) -> str:
    """A loss spec for the grid: ``name:k=v,...``."""
    if not params:
        return name
    return f"{name}:" + ",".join(f"{k}={v}" for k, v in params.items())


@dataclass(frozen=True)
class Criterion:
    metric: str
    higher_is_better: bool


DEFAULT_CRITERIA: dict[str, str] = {
    "classification": "best_val_top1",
    "regression": "best_val_rmse",
    "retrieval": "best_val_map@r",
    "lm": "best_val_ce",
}
"""The validation metric each family is tuned on by default (never a test metric)."""


def criterion_for(family: str, metric: str | None) -> Criterion:
    """``--tune-metric`` (or the family's default) with its direction; test metrics refused."""
    from lossbench.report.stats import higher_is_better

    name = metric or DEFAULT_CRITERIA.get(family, "")
    require(bool(name), f"no default tuning criterion for family '{family}'; pass --tune-metric")
    check_tune_metric(name)
    return Criterion(name, higher_is_better(name))


def check_tune_metric(name: str | None) -> None:
    """A test metric is never a tuning criterion."""
    require(not (name or "").startswith("test_"),
            f"--tune-metric {name} is a test metric; tuning reads validation metrics only")


def _params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, default=str)


def select(configs: Sequence[RunConfig], store: Store, metric: str | None = None
           ) -> list[dict[str, Any]]:
    """Choose, per setting (task spec) and loss, the point with the best mean validation
    criterion over its seeds; write one tuning record per choice; return them."""
    groups: dict[tuple[str, str], dict[str, list[RunConfig]]] = {}
    for cfg in configs:
        setting = setting_key(cfg)
        groups.setdefault((setting, cfg.loss), {}).setdefault(
            _params_key(cfg.loss_params), []).append(cfg)
    out = []
    for (setting, loss), points in groups.items():
        first = next(iter(points.values()))[0]
        crit = criterion_for(first.family, metric)
        rows = []
        for cfgs in points.values():
            values = []
            for cfg in cfgs:
                record = store.read(cfg.key) or {}
                value = (record.get("metrics") or {}).get(crit.metric)
                ok = record.get("status") == "ok" and value is not None and math.isfinite(value)
                values.append(float(value) if ok else None)
            good = [v for v in values if v is not None]
            complete = len(good) == len(values)
            mean = sum(good) / len(good) if complete else None
            rows.append({"params": dict(cfgs[0].loss_params), "keys": [c.key for c in cfgs],
                         "seeds": [c.seed for c in cfgs], "values": values, "mean": mean})
        scored = [i for i, r in enumerate(rows) if r["mean"] is not None]
        sign = 1.0 if crit.higher_is_better else -1.0
        chosen = max(scored, key=lambda i: sign * rows[i]["mean"]) if scored else None
        record = {
            "task": first.task, "family": first.family, "budget": first.budget,
            "spec_key": setting, "loss": loss, "criterion": crit.metric,
            "higher_is_better": crit.higher_is_better, "trials": len(rows), "points": rows,
            "chosen": chosen, "chosen_params": rows[chosen]["params"] if chosen is not None
            else None, "chosen_keys": rows[chosen]["keys"] if chosen is not None else [],
        }
        record["id"] = hashlib.sha256(json.dumps(
            [setting, loss, crit.metric, sorted(r["keys"][0] for r in rows)],
            default=str).encode()).hexdigest()[:16]
        _write(store.root / TUNING_DIR / f"{record['id']}.json", record)
        out.append(record)
    return out


def setting_key(cfg: RunConfig) -> str:
    """What identifies a setting: the task's resolved spec at its budget and numerics."""
    return hashlib.sha256(json.dumps([cfg.task, cfg.budget, cfg.spec, cfg.device, cfg.threads],
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def tuning_records(root: Path) -> list[dict[str, Any]]:
    """The tuning records of a results folder (unreadable ones are skipped)."""
    folder = Path(root) / TUNING_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("points"), list):
            out.append(record)
    return out


def run_marks(root: Path) -> dict[str, str]:
    """run key -> ``chosen`` (a tuned final run) or ``trial`` (a point that lost)."""
    marks: dict[str, str] = {}
    for record in tuning_records(root):
        for point in record["points"]:
            for key in point.get("keys", []):
                marks.setdefault(key, "trial")
        for key in record.get("chosen_keys", []):
            marks[key] = "chosen"
    return marks
