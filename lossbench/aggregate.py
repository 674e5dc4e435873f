"""Quantile aggregation across finished runs (Fakoor, Kim, Mueller, Smola & Tibshirani, "Flexible
Model Aggregation for Quantile Regression", JMLR 2023).

Members are finished regression runs of a quantile loss that saved their predictions
(``records/<key>.npz``, see ``families.regression``): runs on the same task, split (seed) and
data and validation settings with the same levels, e.g. pinball runs of different models or
training settings. Each member contributes its (sorted) validation and test quantiles in original
units, at the last and at the best-validation epoch; an aggregate combines them level by level:

- ``median`` / ``mean``: the member median / mean at every level (both keep sorted rows sorted);
- ``weighted``: ``sum_j w_{j,tau} q_j(x; tau)`` with weights per member and per level on the
  simplex, fitted on the validation split by minimising its WIS (Fakoor et al.'s global
  aggregation with weights varying over models and levels, their Sec. 3). WIS is a sum over
  levels of pinball losses, so each level's weights are an exact linear program (HiGHS).
  Per-level weights can make rows cross; the scores report it (``crossing_raw``) and the
  post-processings fix it.

The aggregate is scored like a run (``score_quantiles``: RMSE/MAE of the median, interval
coverage, WIS and the post-processed/CQR variants) and becomes a record of its own, key derived
from the method and the member keys, ``loss = "aggregate"``. CQR calibrates on the validation
split, which ``weighted`` also fitted its weights on: its conformal guarantee is then only
approximate (the record says so in ``info``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lossbench.engine.arrays import SUFFIX, read_arrays
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.families.regression import read_config, regression_metrics
from lossbench.losses.regression import Pinball
from lossbench.quantiles import quantile_scores, sort_quantiles, wis

CHECKPOINTS = {"last": "", "best": "@best_val"}
"""Saved prediction sets -> the suffix of the metrics they give (as in a run's record)."""


@dataclass(frozen=True)
class Member:
    """One run's saved quantiles, in original units and sorted, per checkpoint."""

    record: dict[str, Any]
    levels: tuple[float, ...]
    y_val: np.ndarray
    y_test: np.ndarray
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]

    @property
    def key(self) -> str:
        return str(self.record["run_key"])

    @property
    def label(self) -> str:
        cfg = self.record["config"]
        params = ",".join(f"{k}={v}" for k, v in sorted(cfg["loss_params"].items()))
        return f"{cfg['loss']}{':' + params if params else ''} ({self.key})"


def member_of(record: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Member:
    """A member from a record and its saved arrays (standardised head outputs -> units)."""
    shift, scale = float(arrays["y_mean"]), float(arrays["y_std"])

    def units(name: str) -> np.ndarray:
        return sort_quantiles(arrays[name].astype(np.float64) * scale + shift)

    return Member(dict(record), tuple(float(t) for t in arrays["levels"]),
                  arrays["y_val"].astype(np.float64), arrays["y_test"].astype(np.float64),
                  {c: units(f"val_{c}") for c in CHECKPOINTS},
                  {c: units(f"test_{c}") for c in CHECKPOINTS})


def load_members(store: Store) -> tuple[list[Member], int]:
    """Every finished run in ``store`` with saved quantile predictions (aggregates excluded),
    and how many finished regression runs had none (another loss, or an older run)."""
    members, without = [], 0
    for record in store.records():
        cfg = record["config"]
        if record.get("status") != "ok" or cfg.get("family") != "regression" or cfg.get(
                "loss") == "aggregate":
            continue
        arrays = read_arrays(store.records_dir / f"{record['run_key']}{SUFFIX}")
        if arrays is None:
            without += 1
            continue
        members.append(member_of(record, arrays))
    return members, without


def group_key(member: Member) -> str:
    """Members that can be aggregated: same task, split (seed), data and validation settings
    and levels."""
    cfg = member.record["config"]
    spec = cfg["spec"]
    return json.dumps([cfg["task"], cfg["seed"], spec.get("data"), spec.get("split"),
                       member.levels], sort_keys=True, default=str)


def groups(members: Sequence[Member]) -> list[list[Member]]:
    """Members grouped by ``group_key``, each group sorted by run key; their targets must match."""
    by_key: dict[str, list[Member]] = {}
    for member in members:
        by_key.setdefault(group_key(member), []).append(member)
    out = []
    for group in by_key.values():
        group.sort(key=lambda m: m.key)
        first = group[0]
        for other in group[1:]:
            if not (np.array_equal(first.y_val, other.y_val)
                    and np.array_equal(first.y_test, other.y_test)):
                raise UserError(f"runs {first.key} and {other.key} share task, split and data "
                                "settings but not their validation/test targets; re-run one of "
                                "them (lossbench run --force)")
        out.append(group)
    return out


# --------------------------------------------------------------------------------------------
# Combination.
# --------------------------------------------------------------------------------------------


def fit_level_weights(q: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    """Weights [M] on the simplex minimising ``sum_i rho_tau(y_i - sum_j w_j q_ij)`` for member
    quantiles q [M, N] at one level: a linear program (``y - Q^T w = u - v``, u, v >= 0)."""
    from scipy import sparse
    from scipy.optimize import linprog

    m, n = q.shape
    cost = np.concatenate([np.zeros(m), np.full(n, tau), np.full(n, 1.0 - tau)])
    eye = sparse.identity(n, format="csr")
    fit = sparse.hstack([sparse.csr_matrix(q.T), eye, -eye])
    simplex = sparse.hstack([sparse.csr_matrix(np.ones((1, m))), sparse.csr_matrix((1, 2 * n))])
    result = linprog(cost, A_eq=sparse.vstack([fit, simplex]).tocsc(),
                     b_eq=np.concatenate([y, [1.0]]), bounds=(0, None), method="highs")
    if not result.success:  # a feasible LP with a bounded objective; defensive only
        raise RuntimeError(f"weight fit failed at level {tau}: {result.message}")
    w = np.clip(result.x[:m], 0.0, None)
    return w / w.sum()


def fit_weights(q_val: np.ndarray, y_val: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Weights [M, Q] per member and level fitted on validation quantiles q_val [M, N, Q]."""
    return np.stack([fit_level_weights(q_val[:, :, j], y_val, tau)
                     for j, tau in enumerate(levels)], axis=1)


def combine(method: str, q_val: np.ndarray, q_test: np.ndarray, y_val: np.ndarray,
            levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The aggregate's validation and test quantiles, and the fitted weights (``weighted``)."""
    if method == "median":
        return np.median(q_val, axis=0), np.median(q_test, axis=0), None
    if method == "mean":
        return q_val.mean(axis=0), q_test.mean(axis=0), None
    w = fit_weights(q_val, y_val, levels)
    return np.einsum("mq,mnq->nq", w, q_val), np.einsum("mq,mnq->nq", w, q_test), w


METHODS = ("median", "mean", "weighted")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown --method '{method}'; accepted: {', '.join(METHODS)}")


# --------------------------------------------------------------------------------------------
# Scoring and the record.
# --------------------------------------------------------------------------------------------


def score_quantiles(levels: Sequence[float], q_val: np.ndarray, y_val: np.ndarray,
                    q_test: np.ndarray, y_test: np.ndarray, interval: float
                    ) -> tuple[dict[str, float], float, bool | None]:
    """(test metrics without the ``test_`` prefix, validation RMSE, CQR exact) of quantile
    predictions in original units, as a pinball run is scored: the median for RMSE/MAE and the
    outermost sorted interval for coverage (``regression_metrics``), plus ``quantile_scores``."""
    head = Pinball("/".join(repr(float(t)) for t in levels))

    def metrics(q: np.ndarray, y: np.ndarray) -> dict[str, float]:
        pred = head.predict(torch.from_numpy(np.asarray(q, dtype=np.float64)))
        return regression_metrics(pred, torch.from_numpy(y), 0.0, 1.0, interval,
                                  head.interval_level)

    scores = quantile_scores(levels, q_val, y_val, q_test, y_test)
    return metrics(q_test, y_test) | scores.metrics, metrics(q_val, y_val)["rmse"], (
        scores.conformal_exact)


def aggregate(group: Sequence[Member], method: str) -> dict[str, Any]:
    """The aggregate of a group as a run record (status ok), without provenance fields."""
    from lossbench.engine.grid import run_key

    first = group[0]
    levels = first.levels
    spec = first.record["config"]["spec"]
    _, ev = read_config(spec)
    metrics: dict[str, float] = {}
    exact: list[bool] = []
    weights: dict[str, dict[str, dict[str, float]]] = {}
    for checkpoint, suffix in CHECKPOINTS.items():
        q_val = np.stack([m.val[checkpoint] for m in group])
        q_test = np.stack([m.test[checkpoint] for m in group])
        val, test, w = combine(method, q_val, q_test, first.y_val, levels)
        scores, val_rmse, cqr_exact = score_quantiles(levels, val, first.y_val, test,
                                                      first.y_test, ev.interval)
        metrics |= {f"test_{name}{suffix}": v for name, v in scores.items()}
        metrics["val_rmse" if checkpoint == "last" else "best_val_rmse"] = val_rmse
        exact += [] if cqr_exact is None else [cqr_exact]
        if w is not None:
            weights[checkpoint] = {f"{t:g}": {m.key: float(w[i, j]) for i, m in enumerate(group)}
                                   for j, t in enumerate(levels)}
    keys = [m.key for m in group]
    cfg0 = first.record["config"]
    budgets = {m.record["config"]["budget"] for m in group}
    info: dict[str, Any] = {
        "aggregate": method, "quantile_levels": list(levels),
        "members": [{"key": m.key, "method": m.label} for m in group],
        "split": cfg0["seed"], "num_val": len(first.y_val), "num_test": len(first.y_test),
    }
    if exact:
        info["conformal_exact"] = all(exact) and method != "weighted"
        if method == "weighted":
            info["conformal_note"] = ("the weights were fitted on the calibration (validation) "
                                      "split: CQR's coverage guarantee is approximate")
    if weights:
        info["weights"] = weights
    return {
        "run_key": run_key({"aggregate": method, "members": keys}),
        "status": "ok",
        "config": {
            "task": cfg0["task"], "family": "regression",
            "budget": budgets.pop() if len(budgets) == 1 else "mixed", "loss": "aggregate",
            "loss_params": {"method": method, "members": len(group)}, "seed": cfg0["seed"],
            "spec": {k: spec[k] for k in ("task", "family", "data", "split", "eval") if k in spec},
        },
        "members": keys, "metrics": metrics, "curves": {}, "info": info,
    }


def member_wis(member: Member, checkpoint: str = "last") -> float:
    """A member's test WIS (sorted quantiles), for comparison with its aggregate."""
    return float(wis(member.test[checkpoint], member.y_test, member.levels).mean())
