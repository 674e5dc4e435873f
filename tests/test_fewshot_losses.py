"""Few-shot losses (proto-triplet, icnn) against float64 references written from the definitions
(explicit per-point loops, no shared helpers), gradcheck, and the losses' stated properties."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lossbench.errors import UserError
from lossbench.families.fewshot import PrototypeLogitsLoss
from lossbench.losses import LOSSES
from lossbench.losses.fewshot import icnn_score, split_episode


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny models run fastest on one thread; two threads on a shared two-core machine can be
    20x slower (OpenMP oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------------------------------------
# Episodes and references.
# ---------------------------------------------------------------------------------------------


def episode(ways: int, shots: int, queries: int, dim: int, seed: int, spread: float = 1.0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Support rows (class by class) then query rows; class ids are arbitrary integers."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(50, generator=g)[:ways] + 7
    y = torch.cat([classes.repeat_interleave(shots), classes.repeat(queries)])
    centres = spread * torch.randn(ways, dim, generator=g, dtype=torch.float64)
    ids = torch.arange(ways)
    local = torch.cat([ids.repeat_interleave(shots), ids.repeat(queries)])
    x = centres[local] + torch.randn(len(y), dim, generator=g, dtype=torch.float64)
    return x, y


def ref_parts(x: torch.Tensor, y: torch.Tensor, shots: int):
    """Prototypes per class (dict), queries as a list of (row, class)."""
    classes = sorted(set(y.tolist()))
    n_support = shots * len(classes)
    protos = {}
    for c in classes:
        rows = [x[i] for i in range(n_support) if int(y[i]) == c]
        protos[c] = sum(rows) / len(rows)
    queries = [(x[i], int(y[i])) for i in range(n_support, len(y))]
    return classes, protos, queries


def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.sum((a - b) ** 2))


def ref_proto_ce(x, y, shots, temperature):
    classes, protos, queries = ref_parts(x, y, shots)
    out = []
    for q, c in queries:
        logits = torch.stack([-torch.sum((q - protos[k]) ** 2) / temperature for k in classes])
        out.append(torch.logsumexp(logits, 0) - logits[classes.index(c)])
    return torch.stack(out)


def ref_proto_triplet(x, y, shots, margin, ce_weight, temperature):
    classes, protos, queries = ref_parts(x, y, shots)
    pt = []
    for q, c in queries:
        positive = dist(q, protos[c])
        negative = min(dist(q, protos[k]) for k in classes if k != c)
        pt.append(torch.clamp(positive - negative + margin, min=0.0))
    ce = ref_proto_ce(x, y, shots, temperature)
    return ce_weight * ce + (1 - ce_weight) * torch.stack(pt)


def ref_icnn_score(x, y, k, ipc=None):
    """Definition by hand: per point, sorted neighbour lists; means over non-empty sets.

    The neighbourhood follows the official ``modified_score``: ``ipc`` neighbours (default
    ``k + 1`` after clipping ``k``) are searched for the nearest other-class point, the first
    ``k`` of them (fewer when ``ipc < k``) are scored, and gamma divides by ``k``.
    """
    n = len(x)
    labels = y.tolist()
    clipped = k + 2 >= n
    if clipped:
        k = n - 2
    r = min(k + 1 if ipc is None else ipc, n - 1)
    neigh = []
    for i in range(n):
        others = sorted((float(dist(x[i], x[j]).detach()), j) for j in range(n) if j != i)[:r]
        neigh.append([j for _, j in others])
    intra_terms, inter_lists, same_share = [], [], []
    for i in range(n):
        within_r_other = [dist(x[i], x[j]) for j in neigh[i] if labels[j] != labels[i]]
        m = min(within_r_other) if within_r_other else None
        first = neigh[i][:k]
        ratios = [dist(x[i], x[j]) / m if m is not None else torch.zeros((), dtype=x.dtype)
                  for j in first]
        top = max(max(ratios), torch.ones((), dtype=x.dtype))
        same = [ratios[t] / top for t, j in enumerate(first) if labels[j] == labels[i]]
        if same:
            intra_terms.append(sum(same) / len(same))
        inter_lists.append([dist(x[i], x[j]) for j in first if labels[j] != labels[i]])
        same_share.append(len(same) / k)
    lam_intra = 1 - (sum(intra_terms) / len(intra_terms) if intra_terms else 0)
    all_other = [d for lst in inter_lists for d in lst]
    if all_other:
        biggest = max(all_other)
        per_point = [sum(d / biggest for d in lst) / len(lst) for lst in inter_lists if lst]
        lam_inter = sum(per_point) / len(per_point)
    else:
        lam_inter = torch.ones((), dtype=x.dtype)
    gamma = 1.0 if clipped else sum(same_share) / n
    return ((lam_intra + lam_inter) / 2 + gamma) / 2


def ref_icnn(x, y, shots, k, on, ce_weight, temperature):
    """Official ``get_icnn_loss``: ``fullicnn`` passes ``ipc = shot + query``, ``suppicnn`` none."""
    ways = len(set(y.tolist()))
    if on == "full":
        points, labels = x, y
        ipc = len(y) // ways  # shot + query: every class has that many points in the episode
    else:
        points, labels, ipc = x[:shots * ways], y[:shots * ways], None
    icnn = -torch.log(ref_icnn_score(points, labels, k, ipc))
    ce = ref_proto_ce(x, y, shots, temperature)
    return ce_weight * ce + (1 - ce_weight) * icnn


def build(name: str, shots: int, temperature: float = 1.0, **params):
    return LOSSES.get(name).build({k: str(v) for k, v in params.items()}, shots=shots,
                                  temperature=temperature)


def check_against(loss, ref, x, y) -> None:
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    got, want = loss(a, y), ref(b, y)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Proto-Triplet.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ways", "shots", "queries", "margin", "ce_weight", "temperature"), [
    (5, 1, 3, 0.5, 0.5, 1.0), (4, 3, 2, 1.5, 0.0, 2.0), (3, 2, 4, 0.0, 1.0, 0.5),
    (6, 5, 2, 3.0, 0.25, 1.0),
])
def test_proto_triplet_matches_reference(ways, shots, queries, margin, ce_weight, temperature):
    for seed in range(3):
        x, y = episode(ways, shots, queries, dim=6, seed=seed, spread=1.5)
        loss = build("proto-triplet", shots, temperature, margin=margin, ce_weight=ce_weight)
        check_against(loss, lambda v, t: ref_proto_triplet(v, t, shots, margin, ce_weight,
                                                           temperature), x, y)


def test_proto_triplet_gradcheck() -> None:
    x, y = episode(3, 2, 2, dim=4, seed=5, spread=0.8)
    loss = build("proto-triplet", 2, 1.0, margin=2.0)
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (x.requires_grad_(True),))


def test_proto_triplet_is_zero_when_margin_is_met_and_the_hinge_is_exact() -> None:
    # Queries sit on their prototypes, prototypes 10 apart: no triplet violates margin 1.
    centres = torch.tensor([[0.0], [10.0], [25.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    x = centres[y] + torch.tensor([[-1.0], [1.0]] * 3 + [[0.0]] * 3, dtype=torch.float64)
    x.requires_grad_(True)
    pt = build("proto-triplet", 2, margin=1.0, ce_weight=0.0)(x, y)
    assert torch.all(pt == 0)
    pt.sum().backward()
    assert torch.all(x.grad == 0)
    # One query 4 from its prototype and 6 from the nearest other: 4 - 6 + 3 = 1.
    x2 = x.detach().clone()
    x2[6, 0] = 4.0
    pt2 = build("proto-triplet", 2, margin=3.0, ce_weight=0.0)(x2, y)
    torch.testing.assert_close(pt2, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_ce_weight_one_is_the_prototypical_network_loss() -> None:
    x, y = episode(5, 2, 3, dim=6, seed=1)
    proto_ce = PrototypeLogitsLoss(LOSSES.get("ce").build({}, num_classes=5, num_train=1), 2,
                                   1.5)
    for name in ("proto-triplet", "icnn"):
        torch.testing.assert_close(build(name, 2, 1.5, ce_weight=1.0)(x, y), proto_ce(x, y))


# ---------------------------------------------------------------------------------------------
# ICNN.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ways", "shots", "queries", "k", "on"), [
    (5, 1, 3, 4, "full"), (5, 5, 2, 4, "full"), (4, 2, 3, 2, "full"), (5, 1, 2, 4, "support"),
    (3, 4, 2, 3, "support"), (2, 1, 2, 5, "full"),
    # The edges where the official neighbourhood differs from max(k + 1, class size):
    # shot + query = 3 < k + 1 (full), and 10 shots > k + 1 = 5 (support).
    (5, 1, 2, 4, "full"), (5, 10, 2, 4, "support"), (3, 8, 2, 2, "support"),
])
def test_icnn_matches_reference(ways, shots, queries, k, on) -> None:
    for seed in range(3):
        x, y = episode(ways, shots, queries, dim=5, seed=seed, spread=seed * 1.5)
        loss = build("icnn", shots, 2.0, k=k, on=on, ce_weight=0.3)
        check_against(loss, lambda v, t: ref_icnn(v, t, shots, k, on, 0.3, 2.0), x, y)


def test_icnn_gradcheck() -> None:
    x, y = episode(3, 2, 2, dim=4, seed=2, spread=1.0)
    for on in ("full", "support"):
        loss = build("icnn", 2, 1.0, k=3, on=on, ce_weight=0.0)
        assert torch.autograd.gradcheck(lambda v, loss=loss: loss(v, y),
                                        (x.clone().requires_grad_(True),))


def test_icnn_score_range_scale_invariance_and_separation() -> None:
    y = torch.arange(4).repeat_interleave(6)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(len(y), 8, generator=g, dtype=torch.float64)
    centres = torch.randn(4, 8, generator=g, dtype=torch.float64)
    scores = [float(icnn_score(centres[y] * s + noise, y, 4)) for s in (0.0, 1.0, 3.0, 100.0)]
    assert all(0.0 < s <= 1.0 for s in scores)
    assert scores == sorted(scores) and scores[-1] > 0.99  # tighter classes score higher
    x = centres[y] * 2 + noise
    torch.testing.assert_close(icnn_score(7.5 * x, y, 4), icnn_score(x, y, 4))


def test_icnn_gamma_is_one_when_k_is_clipped() -> None:
    # n = 5 points, k = 4: k + 2 >= n, so k is clipped to 3 and gamma = 1 (official code).
    x, y = episode(5, 1, 1, dim=3, seed=0)
    support, labels = x[:5], torch.searchsorted(torch.unique(y), y[:5])
    assert float(icnn_score(support, labels, 4)) >= 0.5


def test_icnn_loss_is_zero_for_separated_tight_classes() -> None:
    x, y = episode(4, 5, 5, dim=6, seed=3, spread=1e4)
    out = build("icnn", 5, k=4, ce_weight=0.0)(x, y)
    assert out.shape == (20,) and float(out.max()) < 1e-3
    assert torch.all(out == out[0])  # an episode-level loss, spread equally over queries


# ---------------------------------------------------------------------------------------------
# Contract and parameters.
# ---------------------------------------------------------------------------------------------


def test_split_episode_prototypes_and_local_labels() -> None:
    x, y = episode(3, 2, 2, dim=4, seed=0)
    ep = split_episode(x, y, 2)
    classes = torch.unique(y)
    for k, c in enumerate(classes):
        torch.testing.assert_close(ep.prototypes[k], x[:6][y[:6] == c].mean(0))
    assert torch.equal(classes[ep.query_labels], y[6:])
    with pytest.raises(RuntimeError, match="not an episode"):
        split_episode(x, y, 4)


def test_registered_as_fewshot_losses_with_checked_parameters() -> None:
    for name in ("proto-triplet", "icnn"):
        entry = LOSSES.get(name)
        assert entry.tags["consumes"] == "fewshot" and "arXiv:2305.09062" in entry.tags["paper"]
        assert set(entry.context) == {"shots", "temperature"}
    for name, params, match in (("proto-triplet", {"margin": "-1"}, "margin"),
                                ("icnn", {"k": "0"}, "k must"),
                                ("icnn", {"ce_weight": "1.5"}, "ce_weight"),
                                ("icnn", {"on": "query"}, "accepted: full, support")):
        with pytest.raises(UserError, match=match):
            LOSSES.get(name).build(params, shots=1, temperature=1.0)


def test_losses_are_finite_in_float32_with_duplicate_points() -> None:
    x, y = episode(3, 2, 2, dim=4, seed=0)
    x = x.float()
    x[1] = x[0]  # a duplicated support point: zero distance
    x.requires_grad_(True)
    for name in ("proto-triplet", "icnn"):
        out = build(name, 2)(x, y)
        out.mean().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
        x.grad = None
