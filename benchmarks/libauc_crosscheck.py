"""sogclr / isogclr against LibAUC's ``GCLoss_v1`` on identical inputs, step after step.

    pip install --no-deps libauc        # only libauc.losses.contrastive is imported
    python benchmarks/libauc_crosscheck.py

(or ``pip install --target /tmp/libauc --no-deps libauc`` and ``PYTHONPATH=$PWD:/tmp/libauc``).
LibAUC is not a dev extra: its declared dependencies include torch_geometric, ogb, transformers
and opencv; ``--no-deps`` suffices for this module. ``tests/test_contrastive.py`` runs the same
comparison on a small case when libauc imports, and skips otherwise.

Both losses see the same two views ``h1, h2`` [B, D] of the same example ids over several steps
(a few passes over N ids, so later batches revisit examples and ``gamma < 1`` applies), each
with its own state. Compared after every step, max |difference| over all steps:

* ``grad``: gradients of the batch loss in both views. LibAUC's batch loss is
  ``mean_i (L_i^a + L_i^b)``; ours is the mean over the 2B rows, so ours is doubled first.
* ``u``: the stored moving averages ``u_i`` of the batch's examples (ours: ``exp(log_u)``).
* ``tau``, ``tau_momentum`` (iSogCLR): learned temperatures and their momentum.

Values are not compared: LibAUC returns a surrogate (``-s+ + mean p s`` with ``p`` detached)
whose value is not the objective; ours returns the objective's estimate (module docstring of
``lossbench.losses.contrastive``). Our loss takes LibAUC's settings (its tau bounds, eta,
beta, no gradient clipping); ``tau_i`` drift towards its bounds is exercised by a large eta.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import torch

from lossbench.losses import LOSSES


def libauc_loss(**kwargs: Any) -> torch.nn.Module:
    from libauc.losses.contrastive import GCLoss_v1

    return GCLoss_v1(device=torch.device("cpu"), **kwargs)


CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "sogclr": ("sogclr", {"temperature": 0.1, "gamma": 0.9}, {"tau": 0.1, "gamma": 0.9}),
    "sogclr-t0.5-g0.3": ("sogclr", {"temperature": 0.5, "gamma": 0.3},
                         {"tau": 0.5, "gamma": 0.3}),
    "isogclr": (
        "isogclr",
        {"tau_init": 0.1, "gamma": 0.9, "rho": 0.3, "eta": 0.01, "beta": 0.9, "tau_min": 0.05,
         "tau_max": 0.7, "grad_clip": float("inf")},
        {"tau": 0.1, "gamma": 0.9, "enable_isogclr": True, "rho": 0.3, "eta": 0.01,
         "beta": 0.9, "tau_min": 0.05, "tau_max": 0.7},
    ),
    "isogclr-eta1": (
        "isogclr",
        {"tau_init": 0.2, "gamma": 0.5, "rho": 0.1, "eta": 1.0, "beta": 0.5, "tau_min": 0.05,
         "tau_max": 0.7, "grad_clip": float("inf")},
        {"tau": 0.2, "gamma": 0.5, "enable_isogclr": True, "rho": 0.1, "eta": 1.0,
         "beta": 0.5, "tau_min": 0.05, "tau_max": 0.7},
    ),
}


def compare(name: str, n: int, batch: int, dim: int, passes: int, seed: int,
            dtype: torch.dtype) -> dict[str, float]:
    """Max |difference| per compared quantity over every step of one case."""
    loss_name, ours_params, theirs_params = CASES[name]
    ours = LOSSES.get(loss_name).build(ours_params, num_train=n).to(dtype)
    theirs = libauc_loss(N=n, **theirs_params)
    gen = torch.Generator().manual_seed(seed)
    worst = {"grad": 0.0, "u": 0.0, "u_rel": 0.0}
    if loss_name == "isogclr":
        worst |= {"tau": 0.0, "tau_momentum": 0.0, "tau_moved": 0.0}
    for _ in range(passes):
        for ids in torch.randperm(n, generator=gen).split(batch):
            h1 = torch.randn(len(ids), dim, generator=gen, dtype=dtype)
            h2 = h1 + 0.5 * torch.randn(len(ids), dim, generator=gen, dtype=dtype)
            a1, a2 = h1.clone().requires_grad_(), h2.clone().requires_grad_()
            theirs(a1, a2, ids).backward()
            out = torch.cat([h1, h2]).requires_grad_()
            rows = torch.cat([ids, ids])
            ours(out, rows, index=rows).mean().backward()
            assert out.grad is not None and a1.grad is not None and a2.grad is not None
            diff = 2.0 * out.grad - torch.cat([a1.grad, a2.grad])
            worst["grad"] = max(worst["grad"], diff.abs().max().item())
            mine_u, their_u = ours.log_u.exp()[ids], theirs.u[ids].squeeze(1).to(dtype)
            gap = (mine_u - their_u).abs()
            worst["u"] = max(worst["u"], gap.max().item())
            worst["u_rel"] = max(worst["u_rel"], (gap / their_u).max().item())
            if loss_name == "isogclr":
                their_tau = theirs.learnable_tau.squeeze(1).to(dtype)
                worst["tau"] = max(worst["tau"], (ours.tau - their_tau).abs().max().item())
                moment = ours.tau_momentum - theirs.grad_tau.squeeze(1).to(dtype)
                worst["tau_momentum"] = max(worst["tau_momentum"], moment.abs().max().item())
                moved = (ours.tau - ours_params["tau_init"]).abs().max().item()
                worst["tau_moved"] = max(worst["tau_moved"], moved)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="examples (state size)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--passes", type=int, default=4, help="passes over the n ids")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if importlib.util.find_spec("libauc") is None:
        raise SystemExit("libauc is not importable: pip install --no-deps libauc")
    import libauc

    print(f"LibAUC {libauc.__version__}, torch {torch.__version__}; n={args.n} batch={args.batch}"
          f" dim={args.dim} passes={args.passes} seeds={args.seeds}; float32 (LibAUC's state "
          "dtype); max |ours - LibAUC| over every step and seed")
    columns = ("grad", "u", "u_rel", "tau", "tau_momentum", "tau_moved")
    print(f"{'case':<18}" + "".join(f"{c:>14}" for c in columns))
    for name in CASES:
        worst: dict[str, float] = {}
        for seed in range(args.seeds):
            found = compare(name, args.n, args.batch, args.dim, args.passes, seed, torch.float32)
            worst = {k: max(v, worst.get(k, 0.0)) for k, v in found.items()}
        print(f"{name:<18}" + "".join(f"{worst[c]:>14.3g}" if c in worst else f"{'-':>14}"
                                      for c in columns))
    print("tau_moved: largest |tau_i - tau_init| reached (the tau updates were exercised).")


if __name__ == "__main__":
    main()
