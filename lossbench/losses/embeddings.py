"""Deep-metric-learning losses on embeddings ``emb`` [N, D] with integer class labels [N].

Every loss L2-normalises the embeddings first (retrieval is scored with cosine similarity) and
returns one value per example, the *anchor*. Many of these losses are defined on the batch as a
whole (a mean over pairs, triplets or proxies); such a batch loss ``L`` is spread over anchors so
that ``mean_i out_i == L`` exactly -- the engine's mean then is the paper's batch loss. The rule
for each loss is in its docstring; ``_spread`` is the common one for "mean over selected terms".

Notation: ``z_i = emb_i / |emb_i|``, ``s_ij = z_i . z_j`` (cosine similarity), ``d_ij = |z_i - z_j|
= sqrt(2 - 2 s_ij)``; positives of anchor ``i`` are the *other* examples of its class, negatives
the examples of other classes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossbench.losses.base import LOSSES, Loss

Average = Literal["nonzero", "all"]

# --------------------------------------------------------------------------------------------
# Shared helpers (pure functions).
# --------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    """Range checks raise ValueError; the registry turns it into a one-line UserError."""
    if not ok:
        raise ValueError(message)


def _unit(emb: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; half/bfloat16 promoted to float32 first."""
    if emb.dtype in (torch.float16, torch.bfloat16):
        emb = emb.float()
    return F.normalize(emb, dim=1)


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive mask without the diagonal, negative mask), both bool [N, N]."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _distances(z: Tensor) -> Tensor:
    """Euclidean distances between unit rows, ``sqrt(2 - 2 s)``, clamped so sqrt' stays finite."""
    return (2.0 - 2.0 * z @ z.T).clamp_min(1e-12).sqrt()


def _log1p_sum_exp(x: Tensor, mask: Tensor) -> Tensor:
    """``log(1 + sum_{j in mask_i} exp(x_ij))`` per row, stable; 0 for an empty row."""
    x = x.masked_fill(~mask, -math.inf)
    return torch.logsumexp(torch.cat([x.new_zeros(len(x), 1), x], dim=1), dim=1)


def _masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """``log sum_{j in mask_i} exp(x_ij)`` per row; an empty row gives a very negative number with
    zero gradient (not -inf, whose backward would be NaN)."""
    x = x.masked_fill(~mask, -math.inf)
    top = x.amax(dim=1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = (x - top).exp().sum(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    return top.squeeze(1) + total.log()


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` without ``F.softplus``'s linear cut-off above 20 (exact in float64)."""
    return torch.logaddexp(x, x.new_zeros(()))


def _spread(values: Tensor, mask: Tensor, average: str,
            anchors: tuple[Tensor, int] | None = None) -> Tensor:
    """Per-anchor shares of the mean of ``values`` over ``mask``.

    ``out_i = N * sum_{t of anchor i} values_t / count`` with ``count`` the number of selected
    terms (``all``) or of selected terms that are > 0 (``nonzero``, PML's ``AvgNonZeroReducer``),
    so ``mean_i out_i`` is exactly the batch mean over terms. Row ``r`` of ``values`` [R, ...]
    belongs to anchor ``r`` (``N`` rows), or to ``ids[r]`` when ``anchors = (ids, N)`` is given.
    No selected term (e.g. no positive pair in the batch, R = 0) gives zeros that still depend
    on ``values``, so backward runs (PML's zero loss does the same).
    """
    picked = torch.where(mask, values, torch.zeros_like(values))
    selected = mask if average == "all" else mask & (values.detach() > 0)
    count = selected.sum().clamp_min(1).to(values.dtype)
    rows = picked.flatten(1).sum(dim=1)
    if anchors is not None:
        ids, n = anchors
        rows = rows.new_zeros(n).index_add(0, ids, rows)
    return rows * (len(rows) / count)


def _cosine_to(z: Tensor, weight: Tensor) -> Tensor:
    """Cosine similarities [N, C] between unit embeddings and the rows of ``weight`` [C, D]."""
    return z @ F.normalize(weight, dim=1).T


def _scaled_ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target.long(), reduction="none")


# --------------------------------------------------------------------------------------------
# Pair- and triplet-based losses.
# --------------------------------------------------------------------------------------------


@LOSSES.register(
    "ms",
    consumes="embeddings",
    paper="Wang, Han, Huang, Dong, Scott, Multi-Similarity Loss with General Pair Weighting for "
    "Deep Metric Learning, CVPR 2019 (Eqs. 11-12, 15)",
)
class MultiSimilarity(Loss):
    """Multi-Similarity loss: pair mining by epsilon, then soft weighting with alpha, beta, lambda.

    Mining (Eqs. 11-12), on detached similarities: a negative ``n`` of anchor ``i`` is kept if
    ``s_in > min_p s_ip - epsilon``; a positive ``p`` if ``s_ip < max_n s_in + epsilon``.
    Weighting (Eq. 15): ``L_i = 1/alpha log(1 + sum_{kept p} exp(-alpha (s_ip - lambda)))
    + 1/beta log(1 + sum_{kept n} exp(beta (s_in - lambda)))``, and ``L_i = 0`` when either kept
    set is empty. The batch loss is ``mean_i L_i`` (the official code divides by the batch size),
    so the per-example value is ``L_i`` itself.

    Defaults are the official code's (MalongTech/research-ms-loss): ``alpha`` = SCALE_POS = 2,
    ``beta`` = SCALE_NEG = 40 (config default; PML and the Proxy-Anchor repo use 50),
    ``lambda`` (its ``thresh``) = 0.5, ``epsilon`` (its ``margin``) = 0.1. The official code drops
    the anchor's self-pair by ``s < 1 - 1e-5``, which also drops exact duplicates; here the self
    pair is excluded by index. PML's MultiSimilarityLoss keeps a lone positive or negative term
    when the other kept set is empty; we follow the official code.
    """

    consumes = "embeddings"

    def __init__(
        self, alpha: float = 2.0, beta: float = 40.0, lambda_: float = 0.5, epsilon: float = 0.1
    ) -> None:
        super().__init__()
        _check(alpha > 0, f"alpha must be > 0, got {alpha}")
        _check(beta > 0, f"beta must be > 0, got {beta}")
        _check(epsilon >= 0, f"epsilon must be >= 0, got {epsilon}")
        self.alpha, self.beta, self.lam, self.eps = alpha, beta, lambda_, epsilon

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        s = z @ z.T
        pos, neg = _masks(target)
        with torch.no_grad():
            hardest_pos = s.masked_fill(~pos, math.inf).amin(dim=1, keepdim=True)
            hardest_neg = s.masked_fill(~neg, -math.inf).amax(dim=1, keepdim=True)
            keep_neg = neg & (s + self.eps > hardest_pos)
            keep_pos = pos & (s - self.eps < hardest_neg)
            valid = keep_pos.any(dim=1) & keep_neg.any(dim=1)
        pos_term = _log1p_sum_exp(-self.alpha * (s - self.lam), keep_pos) / self.alpha
        neg_term = _log1p_sum_exp(self.beta * (s - self.lam), keep_neg) / self.beta
        return torch.where(valid, pos_term + neg_term, torch.zeros_like(pos_term))


@LOSSES.register(
    "contrastive",
    consumes="embeddings",
    paper="Hadsell, Chopra, LeCun, Dimensionality Reduction by Learning an Invariant Mapping, "
    "CVPR 2006 (Eq. 4; two-margin form as in Musgrave et al., A Metric Learning Reality Check, "
    "ECCV 2020)",
)
class Contrastive(Loss):
    """Contrastive loss, two margins: relu(d - m_pos) on positives, relu(m_neg - d) on negatives.

    ``L = mean_{pos pairs} relu(d_ip - pos_margin) + mean_{neg pairs} relu(neg_margin - d_in)``,
    each mean over all ordered pairs in the batch (``average=all``) or over those with a non-zero
    term (``nonzero``, the PML / Reality-Check default). Spread per anchor by ``_spread`` (each
    pair's term goes to its first element). Hadsell et al. use ``pos_margin = 0`` and squared
    terms; the non-squared two-margin form and the defaults (0, 1) are PML's.
    """

    consumes = "embeddings"

    def __init__(
        self, pos_margin: float = 0.0, neg_margin: float = 1.0, average: Average = "nonzero"
    ) -> None:
        super().__init__()
        _check(pos_margin >= 0, f"pos_margin must be >= 0, got {pos_margin}")
        _check(neg_margin > pos_margin, f"neg_margin must be > pos_margin, got {neg_margin}")
        self.pos_margin, self.neg_margin, self.average = pos_margin, neg_margin, average

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        d = _distances(_unit(output))
        pos, neg = _masks(target)
        pull = _spread(F.relu(d - self.pos_margin), pos, self.average)
        push = _spread(F.relu(self.neg_margin - d), neg, self.average)
        return pull + push


Mining = Literal["all", "batch-hard", "semi-hard"]


Mined = tuple[Tensor, Tensor, tuple[Tensor, int] | None]
"""(triplet values, their mask, row -> anchor map or None when row r is anchor r); ``_spread``."""


def _triplet_all(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Mined:
    """Every (a, p, n), one row per positive pair: [P, N]. Rows over positive pairs rather than
    a dense [N, N, N] cube: with 8 images per class in a batch of 256 that is 37x less memory."""
    a, p = pos.nonzero(as_tuple=True)
    values = F.relu(d[a, p][:, None] - d[a] + margin)
    return values, neg[a], (a, len(d))


def _triplet_batch_hard(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Mined:
    """One triplet per anchor: its farthest positive and nearest negative; [N, 1]."""
    far_pos = d.masked_fill(~pos, -math.inf).amax(dim=1)
    near_neg = d.masked_fill(~neg, math.inf).amin(dim=1)
    valid = pos.any(dim=1) & neg.any(dim=1)
    far_pos = torch.where(valid, far_pos, torch.zeros_like(far_pos))
    near_neg = torch.where(valid, near_neg, torch.zeros_like(near_neg))
    return F.relu(far_pos - near_neg + margin)[:, None], valid[:, None], None


def _triplet_semi_hard(d: Tensor, pos: Tensor, neg: Tensor, margin: float) -> Mined:
    """One triplet per (a, p): the nearest negative farther than p, else the farthest; [P, 1]."""
    a, p = pos.nonzero(as_tuple=True)
    d_ap = d[a, p]
    with torch.no_grad():
        row, negs = d[a].detach(), neg[a]  # [P, N]: each pair's anchor row
        farther = negs & (row > d_ap.detach()[:, None])
        semi = row.masked_fill(~farther, math.inf).argmin(dim=1)
        fallback = row.masked_fill(~negs, -math.inf).argmax(dim=1)
        choice = torch.where(farther.any(dim=1), semi, fallback)
    values = F.relu(d_ap - d[a, choice] + margin)[:, None]
    return values, negs.any(dim=1, keepdim=True), (a, len(d))


TRIPLET_MINERS = {
    "all": _triplet_all,
    "batch-hard": _triplet_batch_hard,
    "semi-hard": _triplet_semi_hard,
}


@LOSSES.register(
    "triplet",
    consumes="embeddings",
    paper="Weinberger & Saul, Distance Metric Learning for Large Margin Nearest Neighbor "
    "Classification, JMLR 2009; Schroff, Kalenichenko, Philbin, FaceNet, CVPR 2015 (Eq. 1, "
    "semi-hard); Hermans, Beyer, Leibe, In Defense of the Triplet Loss, arXiv:1703.07737 2017 "
    "(batch-hard)",
)
class Triplet(Loss):
    """Triplet margin loss relu(d_ap - d_an + margin) with in-batch mining.

    ``mining``: ``all`` -- every valid (a, p, n) (Hermans et al.'s batch-all); ``batch-hard`` --
    per anchor, its farthest positive and nearest negative (Hermans et al., Eq. 5);
    ``semi-hard`` -- per (a, p), the nearest negative with ``d_an > d_ap`` (FaceNet Sec. 3.2), or,
    if none is farther than p, the farthest negative (the TensorFlow ``triplet_semihard_loss``
    rule). The batch loss is the mean over the mined triplets (``average=all``) or over those
    with a non-zero term (``nonzero``; PML / Reality-Check default, Hermans' BA!=0); each
    triplet's term goes to its anchor (``_spread``). Distances are Euclidean between unit
    embeddings (not squared). The margin default 0.1 is our choice for unit-sphere distances.
    """

    consumes = "embeddings"

    def __init__(
        self, margin: float = 0.1, mining: Mining = "all", average: Average = "nonzero"
    ) -> None:
        super().__init__()
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        self.margin, self.mine, self.average = margin, TRIPLET_MINERS[mining], average

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        d = _distances(_unit(output))
        pos, neg = _masks(target)
        values, mask, anchors = self.mine(d, pos, neg, self.margin)
        return _spread(values, mask, self.average, anchors)


# --------------------------------------------------------------------------------------------
# Softmax-over-pairs losses.
# --------------------------------------------------------------------------------------------


@LOSSES.register(
    "infonce",
    consumes="embeddings",
    self_supervised=True,
    paper="van den Oord, Li, Vinyals, Representation Learning with Contrastive Predictive "
    "Coding, arXiv:1807.03748 2018 (InfoNCE); Sohn, Improved Deep Metric Learning with "
    "Multi-class N-pair Loss Objective, NeurIPS 2016; Chen et al., SimCLR (NT-Xent), ICML 2020",
)
class InfoNCE(Loss):
    """InfoNCE / NT-Xent with in-batch negatives: one softmax per positive pair.

    For every positive pair (a, p): ``l_ap = -log(exp(s_ap/T) / (exp(s_ap/T) + sum_{n in
    Neg(a)} exp(s_an/T)))`` = ``softplus(logsumexp_n(s_an/T) - s_ap/T)``; the batch loss is
    the mean over all positive pairs (PML ``NTXentLoss`` with ``MeanReducer``), each pair's term
    going to its anchor. With one positive per anchor and ``T = 1`` on unnormalised dot products
    this is Sohn's N-pair-mc loss (Eq. 4). ``temperature`` 0.07 is PML's / MoCo's default.

    On the two views of B images with the image id as label (the self-supervised retrieval
    mode) each row has one positive and ``2B - 2`` negatives, and the mean over rows is SimCLR's
    NT-Xent (Chen et al. 2020, Eq. 1 and the loss ``1/2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``);
    SimCLR's temperature is 0.1 (0.5 in its CIFAR-10 appendix).
    """

    consumes = "embeddings"

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.t = temperature

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        logits = z @ z.T / self.t
        pos, neg = _masks(target)
        negatives = _masked_logsumexp(logits, neg)
        per_pair = _softplus(negatives[:, None] - logits)
        return _spread(per_pair, pos & neg.any(dim=1, keepdim=True), "all")


@LOSSES.register(
    "supcon",
    consumes="embeddings",
    paper="Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, Supervised "
    "Contrastive Learning, NeurIPS 2020 (Eq. 2, L^sup_out)",
)
class SupCon(Loss):
    """Supervised contrastive loss (L^sup_out): mean log-softmax of positives over all others.

    ``L_i = -1/|P(i)| sum_{p in P(i)} log(exp(s_ip/T) / sum_{a != i} exp(s_ia/T))``; ``L_i = 0``
    for an anchor with no positive in the batch. Per-anchor by definition (Eq. 2 sums over
    anchors; the engine's mean divides by N, as the official code's mean). ``temperature`` 0.1
    is PML's default; the official SupContrast code defaults to 0.07 and also multiplies the loss
    by a constant ``T / base_T``, omitted here.

    ``L_i = 0`` too for an anchor with no negative, i.e. on a batch with a single label. Eq. 2
    taken literally is then ``log(N - 1)`` plus the log-mean-exp minus the mean of
    ``s_ia / T`` over the others: a floor set by the batch size and a pull of every pair
    together with nothing to contrast against. PML's SupConLoss returns 0 there; so does this.
    """

    consumes = "embeddings"

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.t = temperature

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        logits = z @ z.T / self.t
        pos, neg = _masks(target)
        log_prob = logits - _masked_logsumexp(logits, pos | neg)[:, None]
        n_pos = pos.sum(dim=1)
        total = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        contrasted = (n_pos > 0) & neg.any(dim=1)
        return torch.where(contrasted, -total / n_pos.clamp_min(1), torch.zeros_like(total))


MWPairs = Literal["global", "anchor"]


@LOSSES.register(
    "mw",
    consumes="embeddings",
    paper="Sheikholeslami, Hosseini, Bechard, Daruru, Rajeswar, Optimizing What Matters: "
    "AUC-Driven Learning for Robust Neural Retrieval, arXiv:2510.00137 2025 (MW loss)",
)
class MannWhitney(Loss):
    """Mann-Whitney (AUC) loss: BCE on every positive-minus-negative score difference.

    ``L = mean_{(i,p) pos, (j,n) neg} softplus(-(s_ip - s_jn) / T)`` -- the logistic surrogate of
    ``1 - AUC`` (the Mann-Whitney U statistic) of positive vs negative pair scores. ``pairs``:
    ``global`` compares every positive pair with every negative pair of the batch, across
    anchors, which is what ties scores to one global threshold (the paper's point: calibration
    across queries); ``anchor`` compares only pairs sharing the anchor (per-query AUC). Each
    comparison's term goes to the anchor of its positive pair (``_spread``).

    Left open by the paper (no official code found) and chosen here: cosine scores with a
    temperature ``T`` (default 0.1, since cosine differences lie in [-2, 2]), ordered pairs
    (both (i, p) and (p, i), which does not change the mean), ``global`` by default.
    """

    consumes = "embeddings"

    def __init__(self, temperature: float = 0.1, pairs: MWPairs = "global") -> None:
        super().__init__()
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.t, self.pairs = temperature, pairs

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        s = z @ z.T / self.t
        pos, neg = _masks(target)
        if self.pairs == "anchor":
            values = _softplus(s[:, None, :] - s[:, :, None])  # [a, p, n]
            return _spread(values, pos[:, :, None] & neg[:, None, :], "all")
        a, p = pos.nonzero(as_tuple=True)
        negatives = s[neg]  # every negative pair's score, all anchors
        values = _softplus(negatives[None, :] - s[a, p][:, None])  # [positive pairs, negatives]
        per_anchor = torch.zeros(len(s), dtype=s.dtype, device=s.device)
        per_anchor = per_anchor.index_add(0, a, values.sum(dim=1))
        count = max(values.numel(), 1)
        return per_anchor * (len(s) / count)


# --------------------------------------------------------------------------------------------
# Proxy- and classifier-based losses (own class parameters).
# --------------------------------------------------------------------------------------------


@LOSSES.register(
    "proxy-anchor",
    consumes="embeddings",
    paper="Kim, Kim, Cho, Kwak, Proxy Anchor Loss for Deep Metric Learning, CVPR 2020 (Eq. 4)",
)
class ProxyAnchor(Loss):
    """Proxy-Anchor loss: each class proxy is an anchor pulling its batch members, pushing others.

    ``L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
    + 1/|P| sum_{p in P} log(1 + sum_{x in X_p-} exp(alpha (s(x, p) + delta)))``, with P+ the
    proxies of classes present in the batch and P all ``num_classes`` proxies. Spread per
    example: proxy p's positive term is split evenly over its |X_p+| batch members (times
    N/|P+|); the negative part is given whole to every example; the mean is exactly ``L``.
    Defaults ``alpha = 32``, ``margin`` (delta) ``= 0.1`` and Kaiming-normal (fan_out) proxy
    initialisation are the official code's. The official code also trains the proxies with a
    100x learning rate; the engine uses one learning rate for all parameters.
    """

    consumes = "embeddings"
    lr_multiplier = 100.0  # the official code trains the proxies at 100x the model lr

    def __init__(
        self, num_classes: int, embedding_dim: int, alpha: float = 32.0, margin: float = 0.1
    ) -> None:
        super().__init__()
        _check(alpha > 0, f"alpha must be > 0, got {alpha}")
        self.alpha, self.margin, self.num_classes = alpha, margin, num_classes
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        z = _unit(output)
        cos = _cosine_to(z, self.proxies.to(z.dtype))  # [N, C]
        member = F.one_hot(target.long(), self.num_classes).bool()
        per_proxy_pos = _log1p_sum_exp(-self.alpha * (cos - self.margin).T, member.T)  # [C]
        per_proxy_neg = _log1p_sum_exp(self.alpha * (cos + self.margin).T, ~member.T)  # [C]
        sizes = member.sum(dim=0)  # batch members per class
        present = int((sizes > 0).sum())
        share = per_proxy_pos[target.long()] / sizes[target.long()]
        return share * (len(z) / present) + per_proxy_neg.mean()


class _CosineClassifier(Loss):
    """Shared parts of the normalised-softmax family: class weights [C, D] and cosine logits."""

    consumes = "embeddings"

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=embedding_dim**-0.5)

    def cosines(self, output: Tensor) -> Tensor:
        z = _unit(output)
        return _cosine_to(z, self.weight.to(z.dtype))


@LOSSES.register(
    "norm-softmax",
    consumes="embeddings",
    paper="Zhai & Wu, Classification is a Strong Baseline for Deep Metric Learning, BMVC 2019 "
    "(Eq. 2, normalized softmax with temperature)",
)
class NormSoftmax(_CosineClassifier):
    """Normalised softmax: cross-entropy on cos(emb, w_c) / T over the training classes.

    ``L_i = -log softmax_c(cos(z_i, w_c) / T)_{y_i}``; ``temperature`` 0.05 is PML's default.
    Class weights are parameters of the loss (``num_classes`` = training classes).
    """

    def __init__(self, num_classes: int, embedding_dim: int, temperature: float = 0.05) -> None:
        super().__init__(num_classes, embedding_dim)
        _check(temperature > 0, f"temperature must be > 0, got {temperature}")
        self.t = temperature

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return _scaled_ce(self.cosines(output) / self.t, target)


@LOSSES.register(
    "cosface",
    consumes="embeddings",
    paper="Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, CosFace: Large Margin Cosine Loss for Deep "
    "Face Recognition, CVPR 2018 (Eq. 4)",
)
class CosFace(_CosineClassifier):
    """CosFace (large-margin cosine loss): softmax over s * (cos theta_c - m [c = y]).

    ``L_i = -log( e^{s (cos theta_y - m)} / (e^{s (cos theta_y - m)} + sum_{c != y}
    e^{s cos theta_c}) )``; ``scale`` s = 64, ``margin`` m = 0.35 as in the paper and PML.
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, scale: float = 64.0, margin: float = 0.35
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        _check(scale > 0, f"scale must be > 0, got {scale}")
        _check(margin >= 0, f"margin must be >= 0, got {margin}")
        self.scale, self.margin = scale, margin

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        cos = self.cosines(output)
        shift = F.one_hot(target.long(), cos.shape[1]).to(cos.dtype) * self.margin
        return _scaled_ce(self.scale * (cos - shift), target)


@LOSSES.register(
    "arcface",
    consumes="embeddings",
    paper="Deng, Guo, Xue, Zafeiriou, ArcFace: Additive Angular Margin Loss for Deep Face "
    "Recognition, CVPR 2019 (Eq. 3)",
)
class ArcFace(_CosineClassifier):
    """ArcFace (additive angular margin): softmax over s * cos(theta_c + m [c = y]).

    The target logit is ``s cos(theta_y + m)`` while ``theta_y + m <= pi``; beyond that (where
    ``cos(theta + m)`` would stop decreasing) it is ``s (cos theta_y - m sin m)``, the official
    InsightFace rule (also PML's). ``scale`` s = 64 and ``margin`` m = 0.5 rad (28.6 deg) are the
    paper's. ``cos(theta + m)`` is expanded as ``cos theta cos m - sin theta sin m`` with a
    clamped ``sin theta`` so the gradient stays finite at ``cos theta = +-1``.
    """

    def __init__(
        self, num_classes: int, embedding_dim: int, scale: float = 64.0, margin: float = 0.5
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        _check(scale > 0, f"scale must be > 0, got {scale}")
        _check(0 <= margin < math.pi / 2, f"margin must be in [0, pi/2) radians, got {margin}")
        self.scale, self.margin = scale, margin

    def forward(self, output: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        cos = self.cosines(output)
        y = target.long()[:, None]
        c = cos.gather(1, y)
        sin = (1.0 - c * c).clamp_min(1e-12).sqrt()
        m = self.margin
        target_logit = torch.where(
            c >= -math.cos(m), c * math.cos(m) - sin * math.sin(m), c - m * math.sin(m)
        )
        return _scaled_ce(self.scale * cos.scatter(1, y, target_logit), target)
