"""Inductive nearest prototype: the family's rule since the start (and its epoch selection)."""

from __future__ import annotations

from torch import Tensor

from lossbench.data.episodes import nearest_prototype
from lossbench.fewshot_inference.base import INFERENCE, Norm, normalise

_SNELL = ("Snell, Swersky, Zemel, Prototypical Networks for Few-shot Learning, NeurIPS 2017 "
          "(Eq. 1-2); with norm=l2: Wang et al., SimpleShot, arXiv:1911.04623 2019")


@INFERENCE.register("prototype", transductive=False, paper=_SNELL)
class Prototype:
    """Nearest prototype: each query takes the class of the nearest mean support embedding
    (squared Euclidean distance). ``norm = "l2"`` first L2-normalises the episode (SimpleShot's
    L2N); the default ``none`` is the family's ``test_acc_<W>w<K>s`` rule, bit for bit."""

    def __init__(self, norm: Norm = "none") -> None:
        self.norm = norm

    def __call__(self, support: Tensor, query: Tensor) -> Tensor:
        return nearest_prototype(*normalise(support, query, self.norm))
