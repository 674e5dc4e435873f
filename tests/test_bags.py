"""Aggregate responses (Javanmard et al., ICLR 2024): bags, the bag-level / instance-level /
interpolating losses against float64 references and the paper's properties, and bagged runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.bags import (
    BagConfig,
    bag_batches,
    bag_responses,
    bag_steps,
    clustered_bags,
    hidden_share,
    random_bags,
    read_bags,
)
from lossbench.engine.grid import expand
from lossbench.engine.store import Store
from lossbench.errors import UserError
from lossbench.losses import LOSSES

runner = CliRunner()


# --------------------------------------------------------------------------------------------
# Bags.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(100, 8), (96, 8), (7, 2), (5, 8)])
def test_random_bags_have_k_members_but_one(n: int, k: int) -> None:
    ids = random_bags(n, k, seed=3)
    sizes = np.bincount(ids)
    assert len(sizes) == -(-n // k) and sizes.sum() == n
    assert sorted(sizes)[1:] == [k] * (len(sizes) - 1) or len(sizes) == 1
    assert np.array_equal(ids, random_bags(n, k, seed=3))
    assert n < 10 or not np.array_equal(ids, random_bags(n, k, seed=4))


def test_clustered_bags_are_balanced_and_compact() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(203, 5)) * np.array([5.0, 3.0, 1.0, 1.0, 0.5])
    for k in (2, 8, 32):
        ids = clustered_bags(x, k)
        sizes = np.bincount(ids)
        assert sizes.sum() == 203 and (sizes == k).sum() == len(sizes) - (203 % k > 0)

        def spread(bag_ids: np.ndarray) -> float:
            return float(np.mean([x[bag_ids == b].var(axis=0).sum() for b in np.unique(bag_ids)
                                  if (bag_ids == b).sum() > 1]))

        assert spread(ids) < 0.5 * spread(random_bags(203, k, seed=0))
    assert np.array_equal(clustered_bags(x, 8), clustered_bags(x, 8))


def test_bag_responses_and_hidden_share() -> None:
    y = np.array([1.0, 3.0, 10.0, 20.0, 5.0])
    ids = np.array([0, 0, 1, 1, 2])
    np.testing.assert_allclose(bag_responses(y, ids), [2, 2, 15, 15, 5])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 3))
    y = x @ np.array([1.0, 2.0, -1.0]) + rng.normal(size=4000) * 0.3
    for k in (2, 8):
        share = hidden_share(y, bag_responses(y, random_bags(4000, k, 0)))
        assert share == pytest.approx(1 - 1 / k, abs=0.03)  # random bags hide ~1 - 1/k
        assert hidden_share(y, bag_responses(y, clustered_bags(x, k))) < share - 0.2
    assert hidden_share(y, y) == 0.0


def test_bag_batches_hold_whole_bags_and_cover_each_example_once() -> None:
    ids = torch.as_tensor(random_bags(103, 8, seed=0))
    batches = list(bag_batches(torch.zeros(103), 32, torch.Generator().manual_seed(0), bags=ids))
    assert len(batches) == bag_steps(ids, 32)
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(103))
    sizes = torch.bincount(ids)
    for batch in batches:
        members = ids[batch]
        assert all(int((members == b).sum()) == int(sizes[b]) for b in members.unique())
        assert len(members.unique()) <= 4
    big = torch.as_tensor(random_bags(100, 64, seed=0))  # bags larger than a batch: one a batch
    assert [len(b) for b in bag_batches(torch.zeros(100), 32, torch.Generator(), bags=big)
            ] in ([64, 36], [36, 64])


def test_bag_config_is_checked() -> None:
    assert read_bags({}) == BagConfig() and not BagConfig().active
    assert read_bags({"bags": {"size": 8, "kind": "clustered"}}).active
    with pytest.raises(UserError, match=r"bags\.size must be an integer >= 1, got 0"):
        read_bags({"bags": {"size": 0}})
    with pytest.raises(UserError, match=r"unknown bags\.kind 'knn'; accepted: random, clustered"):
        read_bags({"bags": {"kind": "knn"}})
    with pytest.raises(UserError, match=r"unknown key\(s\) bags\.k"):
        read_bags({"bags": {"k": 3}})


# --------------------------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------------------------


def build(name: str, bags: torch.Tensor, **params: float) -> torch.nn.Module:
    return LOSSES.get(name).build(params, train_bags=bags)


def reference(f: torch.Tensor, ybar: torch.Tensor, bags: torch.Tensor, rho: float
              ) -> torch.Tensor:
    """Per example, written out bag by bag in float64: (ybar - fbar)^2 + rho (f_i - fbar)^2."""
    out = torch.empty_like(f)
    for b in bags.unique():
        members = (bags == b).nonzero().flatten()
        fbar = sum(f[i] for i in members) / len(members)
        for i in members:
            out[i] = (ybar[i] - fbar) ** 2 + rho * (f[i] - fbar) ** 2
    return out


def bagged_batch(seed: int = 0, n: int = 30, k: int = 4
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(head output [n, 1] float64, bag response per example, bag ids) for n examples."""
    rng = np.random.default_rng(seed)
    bags = torch.as_tensor(random_bags(n, k, seed))
    y = rng.normal(size=n)
    ybar = torch.as_tensor(bag_responses(y, bags.numpy()))
    return torch.as_tensor(rng.normal(size=(n, 1))), ybar, bags


@pytest.mark.parametrize(("name", "rho"), [("bag-level", 0.0), ("instance-level", 1.0),
                                           ("bag-interp", 0.3), ("bag-interp", 0.5)])
def test_bag_losses_match_the_float64_reference_and_gradcheck(name: str, rho: float) -> None:
    out, ybar, bags = bagged_batch()
    loss = build(name, bags, **({"rho": rho} if name == "bag-interp" else {}))
    perm = torch.randperm(len(bags), generator=torch.Generator().manual_seed(1))
    value = loss(out[perm], ybar[perm], index=perm)
    torch.testing.assert_close(value, reference(out[:, 0], ybar, bags, rho)[perm], rtol=1e-12,
                               atol=1e-12)
    leaf = out[perm].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: loss(o, ybar[perm], index=perm), (leaf,))


def test_lemma_1_instance_level_is_bag_level_plus_within_bag_variance() -> None:
    """Javanmard et al. (2024) Lemma 1: (1/k) sum_i (ybar - f_i)^2 = (ybar - fbar)^2 + R, and the
    interpolating loss is linear in rho between the two; instance-level is MSE on bag means."""
    out, ybar, bags = bagged_batch(seed=2, n=40, k=5)
    idx = torch.arange(40)
    inst = build("instance-level", bags)(out, ybar, index=idx)
    bag = build("bag-level", bags)(out, ybar, index=idx)
    f = out[:, 0]
    fbar = torch.as_tensor(bag_responses(f.numpy(), bags.numpy()))
    within = (f - fbar).square()
    torch.testing.assert_close(inst.mean(), (bag + within).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inst.mean(), (ybar - f).square().mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LOSSES.get("mse").build({})(out, ybar).mean(), inst.mean())
    for rho in (0.0, 0.25, 0.75, 1.0):
        interp = build("bag-interp", bags, rho=rho)(out, ybar, index=idx).mean()
        torch.testing.assert_close(interp, (1 - rho) * bag.mean() + rho * inst.mean())


def minimiser(name: str, x: np.ndarray, ybar: np.ndarray, bags: np.ndarray) -> np.ndarray:
    """The linear model minimising a bag loss over all examples: the loss is quadratic in theta,
    so one Newton step from 0 (exact Hessian) lands on the minimiser."""
    loss = build(name, torch.as_tensor(bags))
    xt, yt, idx = torch.as_tensor(x), torch.as_tensor(ybar), torch.arange(len(x))

    def objective(theta: torch.Tensor) -> torch.Tensor:
        return loss((xt @ theta)[:, None], yt, index=idx).mean()

    theta0 = torch.zeros(x.shape[1], dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(objective, theta0)
    hess = torch.autograd.functional.hessian(objective, theta0)
    return (theta0 - torch.linalg.solve(hess, grad)).numpy()


def test_bag_level_is_unbiased_and_instance_level_shrinks() -> None:
    """Javanmard et al. (2024): for linear models the bag-level estimator (least squares of bag
    responses on bag-mean features) is unbiased, the instance-level one biased with lower
    variance; with random bags of k its bias is a shrinkage toward 0 by about 1/k. Our losses'
    minimisers are those estimators (checked against closed forms), averaged over noise draws."""
    rng = np.random.default_rng(0)
    n, d, k, draws = 400, 4, 4, 200
    theta = np.array([1.0, -2.0, 0.5, 1.5])
    x = rng.normal(size=(n, d))
    bags = random_bags(n, k, seed=0)
    pool = np.zeros((n // k, n))
    pool[bags, np.arange(n)] = 1.0 / k
    estimates: dict[str, list[np.ndarray]] = {"bag-level": [], "instance-level": []}
    for draw in range(draws):
        y = x @ theta + rng.normal(size=n)
        ybar = bag_responses(y, bags)
        if draw == 0:
            closed_bag = np.linalg.lstsq(pool @ x, pool @ y, rcond=None)[0]
            closed_inst = np.linalg.lstsq(x, ybar, rcond=None)[0]
            np.testing.assert_allclose(minimiser("bag-level", x, ybar, bags), closed_bag,
                                       rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(minimiser("instance-level", x, ybar, bags), closed_inst,
                                       rtol=1e-8, atol=1e-10)
        estimates["bag-level"].append(np.linalg.lstsq(pool @ x, pool @ y, rcond=None)[0])
        estimates["instance-level"].append(np.linalg.lstsq(x, ybar, rcond=None)[0])
    bag_est, inst_est = (np.array(estimates[n]) for n in ("bag-level", "instance-level"))
    se = bag_est.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(bag_est.mean(axis=0) - theta) < 4 * se)  # unbiased
    shrink = inst_est.mean(axis=0) / theta
    assert np.all(np.abs(shrink - 1 / k) < 0.15)  # biased: about theta / k
    assert np.all(inst_est.var(axis=0) < bag_est.var(axis=0))  # ... with lower variance


def test_bag_losses_refuse_partial_bags_missing_ids_and_bad_rho() -> None:
    out, ybar, bags = bagged_batch()
    loss = build("bag-level", bags)
    with pytest.raises(ValueError, match="whole bags"):
        loss(out[:5], ybar[:5], index=torch.arange(5))
    with pytest.raises(ValueError, match="example ids"):
        loss(out, ybar)
    with pytest.raises(UserError, match=r"bag-interp: rho must be in \[0, 1\], got 1\.5"):
        build("bag-interp", bags, rho=1.5)


# --------------------------------------------------------------------------------------------
# Bagged runs.
# --------------------------------------------------------------------------------------------


def bag_task(tmp_path: Path, size: int, kind: str = "random") -> Path:
    """diabetes (offline) with [bags], as a task file outside the package."""
    root = Path(__file__).resolve().parents[1] / "tasks" / "diabetes.toml"
    text = root.read_text().replace("\n[model]", f'\n[bags]\nsize = {size}\nkind = "{kind}"\n'
                                    "seed = 0\n\n[model]", 1)
    path = tmp_path / f"diabetes-bags-{size}-{kind}.toml"
    path.write_text(text)
    return path


def test_bagged_runs_record_their_bags_and_score_tests_per_example(tmp_path: Path) -> None:
    out = tmp_path / "out"
    task = bag_task(tmp_path, 4)
    result = runner.invoke(app, ["run", "--loss", "bag-level", "--loss", "instance-level",
                                 "--loss", "bag-interp:rho=0.25", "--loss", "mse", "--task",
                                 str(task), "--budget", "smoke", "--seeds", "0", "--device",
                                 "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    recs = {r["config"]["loss"]: r for r in Store(out).records()}
    assert set(recs) == {"bag-level", "instance-level", "bag-interp", "mse"}
    for rec in recs.values():
        assert rec["status"] == "ok", rec.get("reason")
        bags = rec["info"]["bags"]
        assert bags["size"] == 4 and bags["kind"] == "random"
        assert bags["num_bags"] == -(-rec["info"]["num_fit"] // 4)
        assert 0.5 < bags["hidden_share"] < 0.95
        assert rec["config"]["spec"]["bags"] == {"size": 4, "kind": "random", "seed": 0}
    # instance-level is MSE on the bag responses: same batches, same numbers
    assert recs["mse"]["metrics"] == pytest.approx(recs["instance-level"]["metrics"], rel=1e-6)
    assert recs["bag-level"]["metrics"]["test_rmse"] != pytest.approx(
        recs["instance-level"]["metrics"]["test_rmse"], rel=1e-6)


def test_bag_losses_need_bags_and_are_not_in_all(tmp_path: Path) -> None:
    names = {c.loss for c in expand(["all"], ["diabetes"], [0], "smoke")}
    assert not names & {"bag-level", "instance-level", "bag-interp"} and "mse" in names
    result = runner.invoke(app, ["run", "--loss", "bag-level", "--task", "diabetes", "--budget",
                                 "smoke", "--seeds", "0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "loss 'bag-level' learns from bag responses but task 'diabetes' has no bags" in (
        " ".join(result.output.split()))
    clustered = expand(["bag-level"], [str(bag_task(tmp_path, 8, "clustered"))], [0], "smoke")
    assert clustered[0].spec["bags"]["kind"] == "clustered"


def test_clustered_bags_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--loss", "bag-interp", "--task",
                                 str(bag_task(tmp_path, 8, "clustered")), "--budget", "smoke",
                                 "--seeds", "0", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rec = json.loads(next((out / "records").glob("*.json")).read_text())
    assert rec["status"] == "ok" and rec["info"]["bags"]["kind"] == "clustered"
