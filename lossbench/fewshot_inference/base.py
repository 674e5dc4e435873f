"""The inference-method registry and what the methods share: feature normalisation, squared
distances and support labels, on batches of E episodes (support [E, W, K, D] class by class,
queries [E, T, D]; a method returns the predicted classes [E, T]).

A method is registered with its user parameters (``name:key=value`` in ``eval.inference``) and
built once per run; it must be deterministic and must not touch the global random state (it runs
after training, on fixed episodes).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.data.episodes import Predictor
from lossbench.registry import Registry, check_params, parse_spec

INFERENCE: Registry[Predictor] = Registry("inference method")

Norm = Literal["none", "l2", "minmax"]
"""Feature normalisation a method applies to its episode before inference:

* ``none``: the embeddings as the family scores them (``eval.norm``);
* ``l2``: each support and query vector scaled to unit norm (TIM's and LaplacianShot's official
  evaluations; SimpleShot's L2N);
* ``minmax``: each feature dimension scaled by 1 / (its range over the episode's queries), a
  range of 0 counting as 1: the official PADDLE code's ``MinMaxScaler`` (which also shifts every
  point by one vector per episode, a translation that no distance or weighted mean depends on)."""


def normalise(support: Tensor, query: Tensor, norm: str) -> tuple[Tensor, Tensor]:
    """Support [E, W, K, D] and queries [E, T, D] under ``norm`` (see ``Norm``)."""
    if norm == "l2":
        return F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    if norm == "minmax":
        spread = query.amax(dim=1) - query.amin(dim=1)
        scale = 1.0 / torch.where(spread == 0, torch.ones_like(spread), spread)
        return support * scale[:, None, None, :], query * scale[:, None, :]
    return support, query


def squared_distances(x: Tensor, w: Tensor) -> Tensor:
    """``|x_n - w_k|^2`` [E, N, W] of points [E, N, D] and centres [E, W, D], expanded as
    ``|x|^2 - 2 x.w + |w|^2`` (one matmul; the official TIM and PADDLE codes' form)."""
    return (x.pow(2).sum(-1, keepdim=True) - 2.0 * x @ w.transpose(1, 2)
            + w.pow(2).sum(-1)[:, None, :])


def support_labels(support: Tensor) -> Tensor:
    """One-hot labels [E, W * K, W] of the flattened support (class by class)."""
    e, ways, shots, _ = support.shape
    eye = torch.eye(ways, dtype=support.dtype, device=support.device)
    return eye.repeat_interleave(shots, dim=0).expand(e, -1, -1)


def entropy_terms(p: Tensor) -> Tensor:
    """``sum_k p_k log p_k`` over the last axis, with ``0 log 0 = 0``."""
    return torch.special.xlogy(p, p).sum(-1)


def method_label(text: str) -> str:
    """The canonical spec of a method (its name, then its given parameters sorted): the metric
    suffix of its scores, e.g. ``tim`` or ``tim:iterations=100``. Checks the spec: an unknown
    name, parameter or a value out of range is a one-line UserError."""
    name, params = parse_spec(text)
    check_params(INFERENCE.get(name), params)
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={params[k]}" for k in sorted(params))


def build_method(text: str) -> Predictor:
    """The predictor of a method spec ``name:key=value,...`` (bad names and values are one-line
    UserErrors)."""
    name, params = parse_spec(text)
    return INFERENCE.get(name).build(params)
