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
        ("strided-cnn", {"width": 4}, (1, 28, 28)),
        ("strided-cnn", {"width": 4}, (3, 32, 32)),
    ],
)
def test_models_produce_head_of_requested_size(
    name: str, params: dict, shape: tuple[int, ...]
) -> None:
    model = MODELS.get(name).build(params, in_shape=shape, out_dim=7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_ldr_tabular_mlp_is_tanh_width_min_d_k_xavier() -> None:
    """The LDR code's MLP (models.py): Linear(d, h) tanh Linear(h, h) tanh Linear(h, K) with
    h = min(d, K) and xavier-normal weights; its biases keep PyTorch's default."""
    params = {"activation": "tanh", "hidden_rule": "min-in-out", "init": "xavier-normal"}
    for d, k, h in ((16, 26, 16), (180, 3, 3), (10, 11, 10)):
        model = MODELS.get("mlp").build(params, in_shape=(d,), out_dim=k)
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(d, h), (h, h), (h, k)]
        assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 2
        assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    torch.manual_seed(0)
    big = MODELS.get("mlp").build(params | {"hidden_rule": "fixed", "hidden": 600},
                                  in_shape=(400,), out_dim=10)
    first = next(m for m in big.modules() if isinstance(m, torch.nn.Linear))
    assert first.weight.std().item() == pytest.approx((2 / (400 + 600)) ** 0.5, rel=0.02)
    assert first.bias.abs().max().item() <= 1 / 400**0.5  # PyTorch's uniform(+-1/sqrt(fan_in))
    torch.manual_seed(0)
    default = MODELS.get("mlp").build({"hidden": 600}, in_shape=(400,), out_dim=10)
    default_std = (1 / (3 * 400)) ** 0.5  # uniform(+-1/sqrt(fan_in)): not xavier's 0.045
    assert next(default.parameters()).std().item() == pytest.approx(default_std, rel=0.02)


def test_cuda_without_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("auto").type == "cpu"
