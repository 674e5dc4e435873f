"""Few-shot inference methods (lossbench.fewshot_inference) against float64 references written
from the papers' formulas (explicit loops, no shared helpers), the monotone decrease their papers
prove (PADDLE's and soft k-means' block MM, LaplacianShot's bound updates on a PSD affinity),
what holds of TIM-GD (no descent promise: the loss falls overall), and a cross-check of TIM and
LaplacianShot against easyfsl (the fewshot-check extra; skipped when absent)."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lossbench.data.episodes import episode_accuracy, nearest_prototype
from lossbench.errors import UserError
from lossbench.fewshot_inference import INFERENCE, build_method, method_label
from lossbench.fewshot_inference.clustering import clustering_iterates, clustering_objective
from lossbench.fewshot_inference.laplacianshot import (
    LaplacianShot,
    bdcspn_prototypes,
    bound_updates,
    knn_affinity,
    laplacian_objective,
    official_energy,
)
from lossbench.fewshot_inference.tim import TIMGD, tim_logits, tim_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def episodes(n: int, ways: int, shots: int, queries: int, dim: int, seed: int,
             spread: float = 2.0, weights: list[float] | None = None,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian classes: support [n, W, K, D], queries [n, T, D] and their labels [n, T] (drawn
    with class ``weights``, uniform if None)."""
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(n, ways, dim, generator=g, dtype=dtype)
    support = centres[:, :, None, :] + torch.randn(n, ways, shots, dim, generator=g, dtype=dtype)
    p = torch.tensor(weights or [1.0] * ways, dtype=torch.float64)
    labels = torch.multinomial(p.expand(n, -1), queries, replacement=True, generator=g)
    query = torch.gather(centres, 1, labels[..., None].expand(-1, -1, dim))
    query = query + torch.randn(n, queries, dim, generator=g, dtype=dtype)
    return support, query, labels


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------


def test_every_method_is_registered_with_a_paper_and_checks_its_parameters() -> None:
    assert set(INFERENCE.names()) == {"prototype", "soft-kmeans", "paddle", "tim",
                                      "laplacianshot"}
    for entry in INFERENCE:
        assert entry.tags["paper"] and isinstance(entry.tags["transductive"], bool)
    assert method_label("tim") == "tim"
    assert method_label("tim: lr=0.01 ,iterations=5") == "tim:iterations=5,lr=0.01"
    for bad, match in (("kmeans", "unknown inference method 'kmeans'"),
                       ("tim:steps=3", "unknown parameter 'steps'"),
                       ("paddle:norm=l1", "accepted: none, l2, minmax"),
                       ("tim:lr=0", "lr must be > 0"),
                       ("laplacianshot:knn=1", "knn must be >= 2")):
        with pytest.raises(UserError, match=match):
            build_method(bad)


# ---------------------------------------------------------------------------------------------
# Prototype.
# ---------------------------------------------------------------------------------------------


def test_prototype_is_the_family_rule_and_l2_is_simpleshot() -> None:
    support, query, _ = episodes(6, 4, 3, 10, 5, seed=0, dtype=torch.float32)
    assert torch.equal(build_method("prototype")(support, query),
                       nearest_prototype(support, query))
    got = build_method("prototype:norm=l2")(support, query)
    for e in range(6):
        protos = [sum(s / s.norm() for s in support[e, w]) / 3 for w in range(4)]
        for t in range(10):
            q = query[e, t] / query[e, t].norm()
            assert int(got[e, t]) == int(np.argmin([float(((q - p) ** 2).sum()) for p in protos]))


# ---------------------------------------------------------------------------------------------
# Soft k-means and PADDLE.
# ---------------------------------------------------------------------------------------------


def ref_clustering_step(support: torch.Tensor, query: torch.Tensor, w: torch.Tensor,
                        v: torch.Tensor, lam: float) -> tuple[torch.Tensor, ...]:
    """One PADDLE iteration of one episode, point by point: u, v, w."""
    ways, shots, _ = support.shape
    n = len(query)
    u = torch.zeros(n, ways, dtype=torch.float64)
    for i in range(n):
        scores = [-0.5 * float(((query[i] - w[k]) ** 2).sum()) + lam / n * float(v[k])
                  for k in range(ways)]
        top = max(scores)
        z = sum(math.exp(s - top) for s in scores)
        u[i] = torch.tensor([math.exp(s - top) / z for s in scores])
    pi = u.mean(0)
    v_new = torch.log(pi) + 1
    w_new = torch.stack([(support[k].sum(0) + sum(u[i, k] * query[i] for i in range(n)))
                         / (shots + u[:, k].sum()) for k in range(ways)])
    return u, v_new, w_new


def ref_clustering_objective(support: torch.Tensor, query: torch.Tensor, u: torch.Tensor,
                             w: torch.Tensor, lam: float) -> float:
    ways, shots, _ = support.shape
    total = sum(0.5 * float(((support[k, j] - w[k]) ** 2).sum())
                for k in range(ways) for j in range(shots))
    for i in range(len(query)):
        for k in range(ways):
            total += float(u[i, k]) * (0.5 * float(((query[i] - w[k]) ** 2).sum())
                                       + math.log(float(u[i, k])))
    pi = u.mean(0)
    return total - lam * sum(float(p) * math.log(float(p)) for p in pi)


@pytest.mark.parametrize("lam", [0.0, 30.0])
def test_clustering_iterates_and_objective_match_the_formulas(lam: float) -> None:
    support, query, _ = episodes(2, 3, 2, 30, 4, seed=1)
    iterates = list(clustering_iterates(support, query, lam, 4))
    for e in range(2):
        w, v = support[e].mean(1), torch.zeros(3, dtype=torch.float64)
        for u_got, w_got in iterates:
            u, v, w = ref_clustering_step(support[e], query[e], w, v, lam)
            torch.testing.assert_close(u_got[e], u)
            torch.testing.assert_close(w_got[e], w)
        got = clustering_objective(support, query, u_got, w_got, lam)[e]
        ref = ref_clustering_objective(support[e], query[e], u_got[e], w_got[e], lam)
        assert float(got) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize(("lam_per_query", "weights"), [
    (0.0, None), (1.0, None), (1.0, [6.0, 1.0, 1.0, 0.2, 0.1]), (3.0, [1.0, 1.0, 0.0, 0.0, 0.0]),
])
def test_paddle_and_soft_kmeans_objective_never_increases(lam_per_query: float,
                                                          weights: list[float] | None) -> None:
    """The block MM's guarantee (PADDLE, Martin et al. 2022; soft k-means at lambda = 0), from the
    first iterate on, on overlapping classes where assignments move for many iterations."""
    support, query, _ = episodes(8, 5, 1, 60, 6, seed=2, spread=0.8, weights=weights)
    lam = lam_per_query * 60
    values = torch.stack([clustering_objective(support, query, u, w, lam)
                          for u, w in clustering_iterates(support, query, lam, 60)])
    steps = values[1:] - values[:-1]
    assert bool((steps <= 1e-9 * values[:-1].abs()).all())
    assert bool((values[-1] < values[0] - 1e-3).all())  # and it does move


def test_each_clustering_block_minimises_its_own_problem() -> None:
    """w-step: the gradient of F in w vanishes; u-step: the surrogate's gradient in u_n is equal
    across classes (the simplex optimality condition with u_n > 0)."""
    support, query, _ = episodes(3, 4, 2, 25, 5, seed=3, spread=1.0)
    lam = 25.0
    (u1, w1), (u2, w2) = list(clustering_iterates(support, query, lam, 2))
    w = w2.clone().requires_grad_(True)
    (grad_w,) = torch.autograd.grad(clustering_objective(support, query, u2, w, lam).sum(), w)
    assert float(grad_w.abs().max()) < 1e-10
    v1 = torch.log(u1.mean(1)) + 1
    u = u2.clone().requires_grad_(True)
    distances = ((query[:, :, None, :] - w1[:, None, :, :]) ** 2).sum(-1)
    surrogate = (0.5 * u * distances + torch.special.xlogy(u, u)
                 - lam / 25 * u * v1[:, None, :]).sum()
    (grad_u,) = torch.autograd.grad(surrogate, u)
    spread = grad_u.amax(-1) - grad_u.amin(-1)
    assert float(spread.max()) < 1e-9


def test_paddle_keeps_the_classes_present_when_queries_hold_few() -> None:
    """PADDLE's claim: the MDL term lets absent support classes die out, so fewer classes are
    predicted than by soft k-means when the queries hold 2 of 5 classes."""
    support, query, labels = episodes(40, 5, 5, 75, 8, seed=4, spread=1.0,
                                      weights=[1.0, 1.0, 0.0, 0.0, 0.0])
    predicted = {name: build_method(f"{name}:norm=none")(support.float(), query.float())
                 for name in ("soft-kmeans", "paddle")}
    used = {n: np.mean([len(torch.unique(p[e])) for e in range(40)]) for n, p in predicted.items()}
    accuracy = {n: float((p == labels).float().mean()) for n, p in predicted.items()}
    assert used["paddle"] < used["soft-kmeans"]
    assert accuracy["paddle"] > accuracy["soft-kmeans"]


def test_paddle_merges_classes_as_the_features_shrink() -> None:
    """The data term ``1/2 |z - w|^2`` scales with the features squared, the MDL term does not:
    shrinking the same episodes makes PADDLE predict fewer classes (towards one), while soft
    k-means keeps them (the scale sensitivity the clustering docstring warns of)."""
    support, query, _ = episodes(30, 3, 1, 45, 32, seed=15, spread=1.0, dtype=torch.float32)

    def classes_used(name: str, scale: float) -> float:
        pred = build_method(f"{name}:norm=none")(scale * support, scale * query)
        return float(np.mean([len(torch.unique(p)) for p in pred]))

    paddle = [classes_used("paddle", s) for s in (1.0, 0.3, 0.1)]
    assert paddle[0] > 2.9 and paddle[0] > paddle[1] > paddle[2] and paddle[2] < 1.5
    assert classes_used("soft-kmeans", 0.1) > paddle[2] + 1


def test_minmax_scales_each_dimension_by_the_query_range() -> None:
    from lossbench.fewshot_inference.base import normalise

    support, query, _ = episodes(2, 3, 2, 10, 4, seed=5)
    query[:, :, 3] = 7.0  # a constant dimension keeps scale 1
    s, q = normalise(support, query, "minmax")
    for e in range(2):
        for d in range(4):
            spread = float(query[e, :, d].max() - query[e, :, d].min()) or 1.0
            torch.testing.assert_close(q[e, :, d], query[e, :, d] / spread)
            torch.testing.assert_close(s[e, :, :, d], support[e, :, :, d] / spread)


# ---------------------------------------------------------------------------------------------
# TIM-GD.
# ---------------------------------------------------------------------------------------------


def ref_tim_loss(support: torch.Tensor, query: torch.Tensor, w: torch.Tensor, tau: float,
                 weights: tuple[float, float, float]) -> torch.Tensor:
    """One episode's TIM loss from Boudiaf et al.'s definitions, point by point."""
    ways, shots, _ = support.shape

    def probs(z: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([-tau / 2 * ((z - w[k]) ** 2).sum() for k in range(ways)])
        return torch.softmax(scores, 0)

    ce = sum(-torch.log(probs(support[k, j])[k]) for k in range(ways)
             for j in range(shots)) / (ways * shots)
    p = torch.stack([probs(z) for z in query])
    conditional = -sum((p[i] * torch.log(p[i] + 1e-12)).sum() for i in range(len(query))) / len(p)
    pbar = p.mean(0)
    marginal = -(pbar * torch.log(pbar)).sum()
    return weights[0] * ce - (weights[1] * marginal - weights[2] * conditional)


def test_tim_loss_and_gradient_match_the_definition() -> None:
    support, query, _ = episodes(2, 3, 2, 12, 4, seed=6, spread=0.5)
    w = (support.mean(2) + 0.1).requires_grad_(True)
    kw = {"temperature": 3.0, "ce_weight": 0.1, "marginal_weight": 1.0,
          "conditional_weight": 0.1}
    got = tim_loss(support, query, w, **kw)
    for e in range(2):
        ref = ref_tim_loss(support[e], query[e], w[e], 3.0, (0.1, 1.0, 0.1))
        assert float(got[e].detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    assert torch.autograd.gradcheck(lambda x: tim_loss(support, query, x, **kw), (w,))


def test_tim_logits_are_the_euclidean_or_cosine_scores() -> None:
    x, w = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    euclid = -7.5 * ((x[:, :, None] - w[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(tim_logits(x, w, 15.0, "euclidean"), euclid)
    cos = torch.nn.functional.cosine_similarity(x[:, :, None], w[:, None], dim=-1)
    torch.testing.assert_close(tim_logits(x, w, 10.0, "cosine"), 10 * cos)


def test_tim_gd_loss_falls_and_episodes_run_as_if_alone() -> None:
    """No descent is promised for Adam (module docstring); what holds: the loss ends well below
    its start and its mean over the last tenth of the steps is below the first tenth's."""
    support, query, _ = episodes(4, 5, 1, 40, 16, seed=7, spread=0.6, dtype=torch.float32)
    losses: list[torch.Tensor] = []
    tim = TIMGD(iterations=300, lr=1e-3)
    w = tim.fit(support, query, trace=losses.append)
    curve = torch.stack(losses)
    assert len(curve) == 301 and bool((curve[-1] < curve[0]).all())
    assert bool((curve[-30:].mean(0) < curve[:30].mean(0)).all())
    alone = torch.cat([tim.fit(support[e : e + 1], query[e : e + 1]) for e in range(4)])
    torch.testing.assert_close(w, alone, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# LaplacianShot.
# ---------------------------------------------------------------------------------------------


def test_knn_affinity_links_each_query_to_its_nearest_others() -> None:
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    got = knn_affinity(x, 3)
    for e in range(2):
        for q in range(9):
            d = [float(((x[e, q] - x[e, p]) ** 2).sum()) if p != q else math.inf
                 for p in range(9)]
            assert set(torch.nonzero(got[e, q]).flatten().tolist()) == set(np.argsort(d)[:2])


def gaussian_affinity(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """A symmetric positive semi-definite affinity (a Gaussian kernel), where the bound holds."""
    return torch.exp(-torch.cdist(x, x).pow(2) / (2 * sigma**2))


@pytest.mark.parametrize("lam", [0.3, 1.0, 3.0])
def test_laplacianshot_objective_never_increases_on_a_psd_affinity(lam: float) -> None:
    support, query, _ = episodes(6, 5, 1, 30, 4, seed=8, spread=0.7)
    affinity = gaussian_affinity(query)
    assert bool((torch.linalg.eigvalsh(affinity) > -1e-10).all())
    unary = torch.cdist(query, support.mean(2)).pow(2)
    path = bound_updates(unary, affinity, lam, 30, stop=False)
    values = torch.stack([laplacian_objective(y, unary, affinity, lam) for y in path])
    steps = values[1:] - values[:-1]
    assert bool((steps <= 1e-9 * values[:-1].abs()).all())
    assert bool((values[-1] < values[0] - 1e-3).all())


def test_bound_update_minimises_the_bound_and_energies_match_the_formulas() -> None:
    _, query, _ = episodes(2, 3, 1, 15, 4, seed=9)
    affinity = knn_affinity(query, 3)
    unary = torch.rand(2, 15, 3, dtype=torch.float64)
    y0, y1 = bound_updates(unary, affinity, 0.7, 1, stop=False)
    y = y1.clone().requires_grad_(True)
    bound = (y * (torch.log(y) + unary - 0.7 * affinity @ y0)).sum()
    (grad,) = torch.autograd.grad(bound, y)
    assert float((grad.amax(-1) - grad.amin(-1)).max()) < 1e-10
    for e in range(2):
        ref_e = sum(float(y1[e, q, k]) * (float(unary[e, q, k]) + math.log(float(y1[e, q, k])))
                    for q in range(15) for k in range(3))
        pair = sum(float(affinity[e, q, p]) * float(y1[e, q] @ y1[e, p])
                   for q in range(15) for p in range(15))
        assert float(laplacian_objective(y1, unary, affinity, 0.7)[e]) == pytest.approx(
            ref_e - 0.35 * pair, rel=1e-10)
        assert float(official_energy(y1, unary, affinity, 0.7)[e]) == pytest.approx(
            ref_e - 0.7 * pair, rel=1e-10)


def test_laplacianshot_stops_per_episode_once_its_energy_settles() -> None:
    support, query, _ = episodes(5, 4, 1, 30, 4, seed=10, spread=0.5)
    unary = torch.cdist(query, support.mean(2)).pow(2)
    affinity = knn_affinity(query, 3)
    stopped = bound_updates(unary, affinity, 0.7, 50)
    assert len(stopped) < 51
    for e in range(5):  # each episode alone: the same assignments
        alone = bound_updates(unary[e : e + 1], affinity[e : e + 1], 0.7, 50)[-1]
        torch.testing.assert_close(stopped[-1][e : e + 1], alone)


def test_bdcspn_rectified_prototypes_match_the_definition() -> None:
    support, query, _ = episodes(2, 3, 2, 9, 4, seed=11)
    got = bdcspn_prototypes(support, query, 10.0)
    for e in range(2):
        shift = support[e].reshape(-1, 4).mean(0) - query[e].mean(0)
        protos = support[e].mean(1)

        def cos(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(a @ b / (a.norm() * b.norm()))

        for k in range(3):
            members = [support[e, k, j] for j in range(2)]
            members += [q + shift for q in query[e]
                        if int(np.argmax([cos(q + shift, p) for p in protos])) == k]
            weights = [math.exp(10 * cos(x, protos[k])) for x in members]
            ref = sum(wt * x for wt, x in zip(weights, members, strict=True)) / sum(weights)
            torch.testing.assert_close(got[e, k], ref)


def test_laplacianshot_with_no_laplacian_is_the_prototype_rule() -> None:
    support, query, _ = episodes(5, 5, 2, 30, 6, seed=12, dtype=torch.float32)
    got = LaplacianShot(lam=0.0, norm="none")(support, query)
    assert torch.equal(got, nearest_prototype(support, query))


# ---------------------------------------------------------------------------------------------
# Every method on a family's episodes.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prototype", "soft-kmeans", "paddle", "tim:iterations=50",
                                  "laplacianshot"])
def test_every_method_scores_fixed_episodes_and_is_deterministic(name: str) -> None:
    from lossbench.data.episodes import draw_episodes

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 30)
    emb = torch.as_tensor(3 * rng.normal(size=(8, 64))[labels] + rng.normal(size=(240, 64)),
                          dtype=torch.float32)
    for alpha in (None, 2.0):
        eps = draw_episodes(labels, 5, 1, 6, 12, seed=0, split="test", query_alpha=alpha)
        method = build_method(name)
        acc = episode_accuracy(emb, eps, chunk=5, predict=method)
        assert acc.shape == (12,) and np.array_equal(acc, episode_accuracy(emb, eps,
                                                                           predict=method))
        assert np.mean(acc) > 60  # well above chance (20%) on separated classes


# ---------------------------------------------------------------------------------------------
# Cross-check against easyfsl (Bennequin et al., PyPI ``easyfsl``).
# ---------------------------------------------------------------------------------------------


def easyfsl_methods() -> tuple[Any, Any] | None:
    """easyfsl's TIM and LaplacianShot classes, or None when easyfsl is absent (the
    ``fewshot-check`` extra; ``pip install --no-deps easyfsl`` is enough). ``easyfsl.methods``'s
    ``__init__`` imports torchvision (through FEAT), which these two modules do not need: they are
    loaded without it, so a ``--no-deps`` install works too."""
    spec = importlib.util.find_spec("easyfsl")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "easyfsl.methods" not in sys.modules:
        package = types.ModuleType("easyfsl.methods")
        package.__path__ = [str(Path(spec.submodule_search_locations[0]) / "methods")]
        sys.modules["easyfsl.methods"] = package
    tim = importlib.import_module("easyfsl.methods.tim").TIM
    lshot = importlib.import_module("easyfsl.methods.laplacian_shot").LaplacianShot
    return tim, lshot


EASYFSL = easyfsl_methods()
needs_easyfsl = pytest.mark.skipif(EASYFSL is None, reason="easyfsl not installed (the "
                                   "fewshot-check extra, or pip install --no-deps easyfsl)")


def run_easyfsl(model: Any, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """easyfsl's output for each episode, one at a time, as its API takes them."""
    out = []
    ways, shots = support.shape[1:3]
    for e in range(len(support)):
        model.process_support_set(support[e].reshape(ways * shots, -1),
                                  torch.arange(ways).repeat_interleave(shots))
        out.append(model(query[e]))
    return torch.stack(out)


@needs_easyfsl
def test_tim_matches_easyfsl_in_its_cosine_variant() -> None:
    assert EASYFSL is not None
    support, query, _ = episodes(10, 5, 2, 30, 12, seed=13, spread=0.7, dtype=torch.float32)
    theirs = run_easyfsl(EASYFSL[0](fine_tuning_steps=40), support, query)
    ours = TIMGD(iterations=40, temperature=10.0, ce_weight=1.0, marginal_weight=1.0,
                 conditional_weight=0.1, logits="cosine", norm="none")
    w = ours.fit(support, query)
    torch.testing.assert_close(tim_logits(query, w, 1.0, "cosine"), theirs, rtol=1e-4,
                               atol=1e-5)


@needs_easyfsl
def test_laplacianshot_matches_easyfsl_with_its_rectification() -> None:
    assert EASYFSL is not None
    support, query, _ = episodes(10, 5, 1, 30, 12, seed=14, spread=0.7, dtype=torch.float32)
    theirs = run_easyfsl(EASYFSL[1](), support, query)
    ours = LaplacianShot(norm="none", rectify="bdcspn", rectify_scale=1.0)
    torch.testing.assert_close(ours.assignments(support, query), theirs, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The study table (lossbench.report.fewshot_table).
# ---------------------------------------------------------------------------------------------


def test_fewshot_metric_names_split_into_tidy_columns() -> None:
    from lossbench.report.fewshot_table import split_metric

    assert split_metric("test_acc_5w1s") == {"setting": "5w1s", "queries": "balanced",
                                             "inference": "prototype", "selection": "last"}
    assert split_metric("test_acc_3w5s_dir0.5_tim:iterations=30@best_val") == {
        "setting": "3w5s", "queries": "dir0.5", "inference": "tim:iterations=30",
        "selection": "best_val"}
    assert split_metric("test_acc_5w1s_prototype:norm=l2")["inference"] == "prototype:norm=l2"
    for other in ("test_ci95_5w1s_paddle", "val_acc_5w1s", "best_val_acc_5w1s", "test_top1"):
        assert split_metric(other) is None


def test_inference_table_pivots_seeds_into_mean_std_cells() -> None:
    import pandas as pd

    from lossbench.report.fewshot_table import inference_table

    rng = np.random.default_rng(0)
    values = {}
    rows = []
    for loss in ("ce", "triplet"):
        for seed in range(3):
            for metric in ("test_acc_3w1s", "test_acc_3w1s_paddle", "test_acc_3w1s_dir2",
                           "test_acc_3w1s_dir2_paddle", "test_acc_3w1s@best_val",
                           "test_ci95_3w1s_paddle", "train_loss"):
                value = float(rng.uniform(30, 90))
                values[(loss, metric, seed)] = value
                rows.append({"family": "fewshot", "status": "ok", "method": loss,
                             "seed": seed, "metric": metric, "value": value})
    rows.append({"family": "fewshot", "status": "failed", "method": "ce", "seed": 9,
                 "metric": "test_acc_3w1s", "value": 0.0})
    table = inference_table(pd.DataFrame(rows))
    assert list(table.index) == [("ce", "prototype"), ("ce", "paddle"),
                                 ("triplet", "prototype"), ("triplet", "paddle")]
    assert list(table.columns) == ["3w1s balanced", "3w1s dir2"]
    for (loss, method), column, metric in ((("ce", "paddle"), "3w1s dir2",
                                            "test_acc_3w1s_dir2_paddle"),
                                           (("triplet", "prototype"), "3w1s balanced",
                                            "test_acc_3w1s")):
        seeds = [values[(loss, metric, s)] for s in range(3)]
        assert table.loc[(loss, method), column] == (
            f"{np.mean(seeds):.2f} ± {np.std(seeds, ddof=1):.2f} (3)")
    best = inference_table(pd.DataFrame(rows), "best_val")
    assert list(best.index) == [("ce", "prototype"), ("triplet", "prototype")]
    with pytest.raises(UserError, match="accepted: last, best_val"):
        inference_table(pd.DataFrame(rows), "first")


def test_method_parameters_do_not_set_a_metric_direction() -> None:
    """``ce`` is a lower-is-better word (the LM cross-entropy); TIM's ``ce_weight`` in a method
    label must not turn an accuracy into one."""
    from lossbench.report.stats import higher_is_better

    assert higher_is_better("test_acc_5w1s_tim:ce_weight=0.5")
    assert higher_is_better("test_acc_5w1s_dir2_tim:ce_weight=0.5@best_val")
    assert not higher_is_better("test_ce@best_val") and not higher_is_better("test_nll@best_val")
