"""The CPU optimizers make torch.optim's updates bit for bit, and CPU runs never import
torch._dynamo (which every torch.optim optimizer imports on first use, 1-3 s a process)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lossbench.engine.cpu_optim import CpuAdamW, CpuSGD
from lossbench.engine.train import set_lr


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((7, 5), (5,), (3, 4))]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """Model parameters, and a loss's own parameters at 10x the learning rate."""
    return [{"params": params[:2], "lr_scale": 1.0}, {"params": params[2:], "lr_scale": 10.0}]


def _same_trajectory(ours: Callable[[list], object], theirs: Callable[[list], object]) -> None:
    """Six steps with a learning rate changed every step and one parameter without a gradient in
    step 3: every parameter equal bit for bit after every step."""
    mine, reference = _params(), _params()
    opts = [(ours(_groups(mine)), mine), (theirs(_groups(reference)), reference)]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in mine]
        for opt, params in opts:
            set_lr(opt, 0.1 * 0.8**step)  # type: ignore[arg-type]
            opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
            for i, (p, grad) in enumerate(zip(params, grads, strict=True)):
                if not (step == 2 and i == 1):
                    p.grad = grad.clone()
            opt.step()  # type: ignore[attr-defined]
        for a, b in zip(mine, reference, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("momentum", "nesterov", "decay"), [
    (0.9, False, 5e-4), (0.9, True, 5e-3), (0.0, False, 0.0), (0.5, False, 0.0)])
def test_cpu_sgd_makes_torch_sgds_updates(momentum: float, nesterov: bool, decay: float) -> None:
    _same_trajectory(
        lambda groups: CpuSGD(groups, lr=0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=decay),
        lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=momentum, nesterov=nesterov,
                                       weight_decay=decay))


@pytest.mark.parametrize("decay", [5e-4, 0.0, 0.05])
def test_cpu_adamw_makes_torch_adamws_updates(decay: float) -> None:
    _same_trajectory(lambda groups: CpuAdamW(groups, lr=0.1, weight_decay=decay),
                     lambda groups: torch.optim.AdamW(groups, lr=0.1, weight_decay=decay))


def test_nesterov_without_momentum_fails_as_in_torch() -> None:
    with pytest.raises(ValueError, match="Nesterov"):
        CpuSGD([{"params": _params()}], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        torch.optim.SGD(_params(), lr=0.1, nesterov=True)


def test_cpu_runs_import_neither_dynamo_nor_sklearn() -> None:
    """An SGD task (digits-noisy) and an AdamW one (diabetes), in a fresh interpreter (this one
    may have imported both)."""
    code = ("import sys\nfrom lossbench.engine.grid import expand\n"
            "from lossbench.engine.executors import run_one\n"
            "for loss, task in (('ce', 'digits-noisy'), ('mse', 'diabetes')):\n"
            "    cfg = expand([loss], [task], [0], 'smoke', ['train.epochs=1'])[0]\n"
            "    assert run_one(cfg, 'cpu')['status'] == 'ok'\n"
            "print('torch._dynamo' in sys.modules, 'sklearn' in sys.modules)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root, env=os.environ | {"PYTHONPATH": str(root)})
    assert out.stdout.split() == ["False", "False"]
