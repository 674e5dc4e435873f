"""Reducers: how a batch of per-example losses becomes the number the optimizer descends.

Every loss returns one value per example and the engine takes their mean. A reducer is a
separate axis, as pytorch-metric-learning separates reducers from losses: it turns the batch's
losses into weights ``w_i >= 0`` with ``sum_i w_i = 1`` (computed without gradient, as the papers
do) and the training objective becomes ``sum_i w_i l_i``. Any loss of any family takes one, named
in the loss spec: ``ce:reduce=small-loss,reduce.rate=0.4`` (or ``lossbench run --reduce
small-loss:rate=0.4``, which adds it to every ``--loss``). ``mean`` (``w_i = 1/N``) is the default
and leaves the spec, the run key and the numbers exactly as without a reducer.

The reduced loss still returns one value per example, ``N w_i l_i``, so the engine's mean gives
the weighted objective and every trainer (single, packed, every family's adapter) works
unchanged. The recorded ``train_loss`` is that weighted objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lossbench.errors import require
from lossbench.registry import Entry, Registry, parse_params

REDUCE = "reduce"
"""The loss-spec key naming the reducer; its parameters are ``reduce.<name>`` keys."""


class Reducer:
    """Per-example losses [N] -> weights [N] summing to 1; ``epoch`` is the 0-based epoch being
    trained (for schedules)."""

    def weights(self, losses: Tensor, epoch: int) -> Tensor:
        raise NotImplementedError


REDUCERS: Registry[Reducer] = Registry("reducer")
"""Every reducer, registered with ``@REDUCERS.register(name, paper=...)``."""


@REDUCERS.register("mean", paper="the plain batch mean (every loss's default)")
class MeanReducer(Reducer):
    """The batch mean: ``w_i = 1 / N`` (the default; a spec naming it is the same run)."""

    def weights(self, losses: Tensor, epoch: int) -> Tensor:
        return torch.full_like(losses, 1.0 / len(losses))


def normalise_to_delta(losses: Tensor, delta: float) -> Tensor:
    """Min-max map of the batch's losses onto ``[-delta, delta]`` (the lowest loss to ``-delta``,
    the highest to ``delta``); a batch of equal losses maps to 0."""
    lo, hi = losses.min(), losses.max()
    span = (hi - lo).clamp_min(1e-12)
    return delta * (2.0 * (losses - lo) / span - 1.0)


STRATEGIES = {
    "linupper": lambda x, delta: torch.clamp(x + delta, max=delta),
    "quadratic": lambda x, delta: 1.0 - x.square() / delta**2,
    "extremes": lambda x, delta: x.abs(),
    "uniform": lambda x, delta: x,
}
"""Sow et al.'s strategy functions ``f`` of a normalised loss ``x`` in ``[-delta, delta]``."""


@REDUCERS.register(
    "loss-weight",
    paper="Sow, Woisetschlaeger, Bulusu, Wang, Jacobsen, Liang, Dynamic Loss-Based Sample "
    "Reweighting for Improved Large Language Model Pretraining, ICLR 2025 (arXiv:2502.06733)",
)
class LossBasedReweighting(Reducer):
    """Dynamic loss-based reweighting: ``w_i = softmax_i(f(x_i) / r)``, ``x`` the batch's losses
    min-max normalised to ``[-delta, delta]``.

    The strategies (the paper's Sec. 3): ``linupper`` ``f(x) = min(x + delta, delta)``
    (down-weights the easiest examples, caps the hard ones at the median's weight), ``quadratic``
    ``f(x) = 1 - x^2 / delta^2`` (favours medium losses, down-weights both extremes),
    ``extremes`` ``f(x) = |x|`` (favours both ends), ``uniform`` ``f(x) = x`` (weight grows with
    the loss). ``r`` is the softmax temperature (large ``r`` tends to the mean). Checked against
    the paper's description and a third-party re-implementation (the dataflex library's
    ``LossWeighter``); the authors' repository could not be read from here. The weights are
    computed per batch and carry no gradient.
    """

    def __init__(self, strategy: Literal["linupper", "quadratic", "extremes", "uniform"]
                 = "linupper", delta: float = 1.0, r: float = 1.0) -> None:
        if delta <= 0:
            raise ValueError(f"reduce.delta must be > 0, got {delta}")
        if r <= 0:
            raise ValueError(f"reduce.r must be > 0, got {r}")
        self.strategy, self.delta, self.r = strategy, delta, r

    def weights(self, losses: Tensor, epoch: int) -> Tensor:
        f = STRATEGIES[self.strategy](normalise_to_delta(losses, self.delta), self.delta)
        return torch.softmax(f / self.r, dim=0)


@REDUCERS.register(
    "small-loss",
    paper="Han, Yao, Yu, Niu, Xu, Hu, Tsang, Sugiyama, Co-teaching: Robust Training of Deep "
    "Neural Networks with Extremely Noisy Labels, NeurIPS 2018 (the small-loss selection, "
    "Eq. 1 schedule)",
)
class SmallLossSelection(Reducer):
    """Train on the small-loss part of each batch: the ``ceil((1 - R(e)) N)`` examples with the
    smallest losses get equal weight, the rest none.

    The forget rate follows Co-teaching's schedule ``R(e) = rate * min(e / warmup, 1)`` over
    epochs ``e = 0, 1, ...`` (the paper's ``tau`` and ``T_k``; ``warmup = 0`` drops ``rate`` from
    the first epoch). This is the single-network selection (each network of Co-teaching selects
    for its peer; here the model selects for itself, as in the noisy-label literature's
    self-paced baselines). ``rate`` is usually set to the estimated noise rate.
    """

    def __init__(self, rate: float = 0.2, warmup: int = 10) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"reduce.rate must be in [0, 1), got {rate}")
        if warmup < 0:
            raise ValueError(f"reduce.warmup must be >= 0 epochs, got {warmup}")
        self.rate, self.warmup = rate, warmup

    def forget_rate(self, epoch: int) -> float:
        return self.rate * (min(epoch / self.warmup, 1.0) if self.warmup else 1.0)

    def weights(self, losses: Tensor, epoch: int) -> Tensor:
        n = len(losses)
        keep = max(1, math.ceil((1.0 - self.forget_rate(epoch)) * n))
        chosen = losses.topk(keep, largest=False, sorted=False).indices
        return torch.zeros_like(losses).index_fill_(0, chosen, 1.0 / keep)


class Reduced(nn.Module):
    """A loss whose batch is combined by a reducer: returns ``N w_i l_i`` (see the module doc).

    Attributes the families read from a loss (``consumes``, ``head_dim``, ``predict``,
    ``lr_multiplier``...) are the wrapped loss's; its parameters and state stay its own.
    """

    def __init__(self, inner: nn.Module, reducer: Reducer) -> None:
        super().__init__()
        self.inner = inner
        self.reducer = reducer
        self.epoch = 0

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        losses = self.inner(*args, **kwargs)
        if losses.dim() != 1 or len(losses) < 2:
            return losses
        with torch.no_grad():
            w = self.reducer.weights(losses.detach().double(), self.epoch)
        return losses * (w * len(losses)).to(losses.dtype)

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch = epoch + 1
        hook = getattr(self.inner, "on_epoch_end", None)
        if hook is not None:
            hook(epoch)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "inner":  # copies and unpickling probe these
                raise
            return getattr(super().__getattr__("inner"), name)


def is_reduce_key(key: str) -> bool:
    return key == REDUCE or key.startswith(f"{REDUCE}.")


def split_reduce(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A loss's raw parameters -> (its own, the reducer's ``reduce``/``reduce.*`` keys)."""
    own = {k: v for k, v in values.items() if not is_reduce_key(k)}
    return own, {k: v for k, v in values.items() if is_reduce_key(k)}


def _reducer(values: Mapping[str, Any]) -> tuple[dict[str, Any], Reducer]:
    """The reducer keys, checked, with defaults filled in (``{}`` for the mean, the default, so
    a spec naming ``reduce=mean`` is the same run as one naming nothing), and the reducer they
    build: building is the range check, so it happens once, before any run."""
    name = str(values.get(REDUCE, "mean"))
    entry = REDUCERS.get(name)
    params = {k.partition(".")[2]: v for k, v in values.items() if k != REDUCE}
    require(REDUCE in values or not params,
            f"reducer parameters {', '.join(sorted(params))} given without reduce=NAME; "
            f"accepted reducers: {', '.join(REDUCERS.names())}")
    resolved = entry.resolve(params)
    reducer = entry.build(resolved)
    if name == "mean":
        return {}, reducer
    return {REDUCE: name} | {f"{REDUCE}.{k}": v for k, v in resolved.items()}, reducer


def resolve_reduce(values: Mapping[str, Any]) -> dict[str, Any]:
    """The reducer keys of ``values``, checked, with defaults filled in (see ``_reducer``)."""
    return _reducer(values)[0]


def reducer_defaults(name: str) -> dict[str, str]:
    """``reduce.k`` -> the default value as text, for reducer ``name`` ({} if unknown)."""
    if name not in REDUCERS:
        return {}
    return {f"{REDUCE}.{p.name}": str(p.default) for p in REDUCERS.get(name).params}


def build_reducer(values: Mapping[str, Any]) -> Reducer | None:
    """The reducer the loss parameters name, or None for the plain mean."""
    resolved, reducer = _reducer(values)
    return reducer if resolved else None


class LossEntry(Entry[nn.Module]):
    """A loss's registry entry: its own parameters plus the optional reducer keys, which
    ``resolve`` checks and ``build`` applies by wrapping the loss in ``Reduced``."""

    def resolve(self, values: Mapping[str, Any]) -> dict[str, Any]:
        own, reduce = split_reduce(values)
        return super().resolve(own) | resolve_reduce(reduce)

    def build(self, values: Mapping[str, Any], **context: Any) -> nn.Module:
        own, reduce = split_reduce(values)
        loss = super().build(own, **context)
        reducer = build_reducer(reduce)
        return loss if reducer is None else Reduced(loss, reducer)


def reduce_spec_params(text: str) -> dict[str, str]:
    """``--reduce NAME[:k=v,...]`` -> the loss-spec keys ``reduce=NAME,reduce.k=v``."""
    name, _, rest = text.strip().partition(":")
    require(bool(name),
            f"empty --reduce {text!r}; expected NAME[:k=v,...], e.g. small-loss:rate=0.2")
    return {REDUCE: name} | {f"{REDUCE}.{k}": v for k, v in parse_params(rest, text).items()}


def with_reducer(spec: str, reduce: str) -> str:
    """A loss spec with ``--reduce``'s keys added: ``ce`` + ``small-loss:rate=0.3`` ->
    ``ce:reduce=small-loss,reduce.rate=0.3`` (after a plug-in's ``file.py:Class`` alike), read
    and written by the spec grammar's own parser and writer."""
    from lossbench.plugins import parse_loss_spec
    from lossbench.tuning import spec_text

    name, raw = parse_loss_spec(spec)
    extra = reduce_spec_params(reduce)
    twice = sorted(set(raw) & set(extra))
    require(not twice, f"parameter '{', '.join(twice)}' given twice in {spec!r} and --reduce "
                       f"{reduce!r}")
    return spec_text(name, raw | extra)
