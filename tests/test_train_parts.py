"""Pieces of the training engine: schedules, augmentation, batching, models, device choice."""

from __future__ import annotations

import pytest
import torch

from lossbench.data.augment import crop_flip
from lossbench.engine.train import TrainConfig, batches, lr_factor, resolve_device
from lossbench.errors import UserError
from lossbench.models import MODELS


def test_step_schedule_decays_at_milestones() -> None:
    cfg = TrainConfig(epochs=30, schedule="step", milestones=(10, 20), gamma=0.1)
    total = 30 * 7
    factors = [lr_factor(epoch * 7, total, cfg) for epoch in (0, 9, 10, 19, 20, 29)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_ends_near_zero() -> None:
    cfg = TrainConfig(epochs=5, schedule="cosine")
    assert lr_factor(0, 100, cfg) == 1.0
    assert lr_factor(99, 100, cfg) < 1e-3


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"epochs": 0}, "train.epochs must be >= 1"),
        ({"epochs": 1, "optimizer": "lbfgs"}, "unknown train.optimizer 'lbfgs'; accepted: sgd"),
        ({"epochs": 1, "schedule": "poly"}, "unknown train.schedule 'poly'"),
    ],
)
def test_train_config_errors(table: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TrainConfig.from_spec(table)


def test_batches_cover_everything_once_and_drop_singletons() -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(list(batches(torch.zeros(10), 4, g)))
    assert sorted(idx.tolist()) == list(range(10))
    idx = torch.cat(list(batches(torch.zeros(9), 4, g)))  # 4 + 4 + 1: the singleton is dropped
    assert len(idx) == 8


def test_crop_flip_matches_naive_per_image_reference() -> None:
    x = torch.randn(6, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=2)
    g = torch.Generator().manual_seed(1)
    shifts = torch.randint(0, 5, (2, 6), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        ref = padded[i, :, shifts[0, i] : shifts[0, i] + 8, shifts[1, i] : shifts[1, i] + 8]
        if flips[i]:
            ref = ref.flip(-1)
        torch.testing.assert_close(out[i], ref)


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [
        ("mlp", {}, (64,)),
        ("small-cnn", {"width": 8}, (3, 32, 32)),
        ("airbench", {"widths": "8,16,16", "stem": 4}, (3, 32, 32)),
        ("resnet18", {"width": 8}, (3, 32, 32)),
    ],
)
def test_models_produce_head_of_requested_size(
    name: str, params: dict, shape: tuple[int, ...]
) -> None:
    model = MODELS.get(name).build(params, in_shape=shape, out_dim=7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_cuda_without_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize(("momentum", "nesterov", "decay"), [
    (0.9, False, 5e-4), (0.9, True, 5e-3), (0.0, False, 0.0), (0.5, False, 0.0)])
def test_cpu_sgd_makes_torch_sgds_updates_bit_for_bit(momentum: float, nesterov: bool,
                                                      decay: float) -> None:
    """Two parameter groups (a loss's own parameters at 10x lr), a learning rate changed every
    step, a parameter without a gradient in one step: the same bits as ``torch.optim.SGD``."""
    from lossbench.engine.train import CpuSGD, set_lr

    def params() -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((7, 5), (5,), (3, 4))]

    ours, theirs = params(), params()

    def groups(p: list[torch.nn.Parameter]) -> list[dict]:
        return [{"params": p[:2], "lr_scale": 1.0}, {"params": p[2:], "lr_scale": 10.0}]

    mine = CpuSGD(groups(ours), 0.1, momentum, nesterov, decay)
    reference = torch.optim.SGD(groups(theirs), lr=0.1, momentum=momentum, nesterov=nesterov,
                                weight_decay=decay)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for opt, ps in ((mine, ours), (reference, theirs)):
            set_lr(opt, 0.1 * (0.8**step))
            opt.zero_grad(set_to_none=True)
            for i, (p, grad) in enumerate(zip(ps, grads, strict=True)):
                if not (step == 2 and i == 1):
                    p.grad = grad.clone()
            opt.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)


def test_training_on_cpu_does_not_import_dynamo() -> None:
    """torch.optim's optimizers import torch._dynamo (1-3 s) on first use; a digits run must
    not (fresh interpreter: this one may have imported it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom lossbench.engine.grid import expand\n"
            "from lossbench.engine.executors import run_one\n"
            "cfg = expand(['ce'], ['digits-noisy'], [0], 'smoke', ['train.epochs=1'])[0]\n"
            "assert run_one(cfg, 'cpu')['status'] == 'ok'\n"
            "print('torch._dynamo' in sys.modules, 'sklearn' in sys.modules)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root, env=os.environ | {"PYTHONPATH": str(root)})
    assert out.stdout.split() == ["False", "False"]
