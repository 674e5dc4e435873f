"""Models, registered by name. Context the engine supplies: ``in_shape`` (one example) and
``out_dim`` (the head size the loss asks for: K logits, an embedding size, or a regression head)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torch import nn

from lossbench.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}

HIDDEN_RULES: dict[str, Callable[[int, int, int], int]] = {
    "fixed": lambda hidden, d, k: hidden,
    "min-in-out": lambda hidden, d, k: min(d, k),
}
"""Hidden width from (``hidden``, input size d, output size K). ``min-in-out`` is the LDR
paper's tabular network: width min(d, K) (official ``models.py``, ``MLP``)."""

INITS: dict[str, Callable[[nn.Linear], None]] = {
    "default": lambda layer: None,
    "xavier-normal": lambda layer: nn.init.xavier_normal_(layer.weight),
}
"""Weight initialisers for the Linear layers (biases keep PyTorch's default).
``xavier-normal`` is the LDR code's ``_weights_init`` (Glorot & Bengio 2010)."""


def _mlp_cpu_pack(options: Mapping[str, Any]) -> int:
    """``--pack auto`` on a CPU: 32 for MLPs a few dozen units wide (the LDR paper's min(d, K)
    tabular nets pack at 2.1x the runs/hour of one by one), else 1 (a 512-wide digits MLP
    packed at 0.71x; benchmarks/RESULTS.md)."""
    narrow = options.get("hidden_rule") == "min-in-out" or int(options.get("hidden", 256)) <= 64
    return 32 if narrow else 1


@MODELS.register("mlp", cpu_pack=_mlp_cpu_pack)
def mlp(
    in_shape: tuple[int, ...], out_dim: int, hidden: int = 256, depth: int = 2,
    dropout: float = 0.0, activation: Literal["relu", "tanh"] = "relu",
    hidden_rule: Literal["fixed", "min-in-out"] = "fixed",
    init: Literal["default", "xavier-normal"] = "default",
) -> nn.Module:
    """Multi-layer perceptron; input is flattened. For tabular sets such as digits, Letter.

    ``depth`` hidden layers of ``hidden`` units (``hidden_rule = "min-in-out"``: min(d, K), the
    LDR paper's width), ``activation`` after each, optional dropout; ``init = "xavier-normal"``
    draws every Linear weight from Glorot's normal (biases keep PyTorch's default). The LDR
    paper's tabular model: ``depth = 2, activation = "tanh", hidden_rule = "min-in-out",
    init = "xavier-normal"``.
    """
    _check_positive(hidden=hidden, depth=depth)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    width = math.prod(in_shape)
    size = HIDDEN_RULES[hidden_rule](hidden, width, out_dim)
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            INITS[init](layer)
    return nn.Sequential(*layers)


@MODELS.register("strided-cnn")
def strided_cnn(in_shape: tuple[int, ...], out_dim: int, width: int = 16) -> nn.Module:
    """A small CNN for 28x28 grey images that trains in minutes on a CPU: three stride-2
    convolutions (5x5, 3x3, 3x3; ``width``, 2x, 4x channels) with ReLU, then a linear head.

    Strides instead of pooling and no BatchNorm keep it ~0.6 M multiply-adds per 28x28 image
    at width 16; BatchNorm's backward cost as much as the convolutions on CPU.
    """
    _check_positive(width=width)
    layers: list[nn.Module] = []
    c, size = in_shape[0], in_shape[1:]
    for c_out, k in ((width, 5), (2 * width, 3), (4 * width, 3)):
        layers += [nn.Conv2d(c, c_out, k, stride=2, padding=k // 2), nn.ReLU(inplace=True)]
        c, size = c_out, tuple((s + 1) // 2 for s in size)
    layers += [nn.Flatten(), nn.Linear(c * math.prod(size), out_dim)]
    return nn.Sequential(*layers)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


@MODELS.register("small-cnn")
def small_cnn(in_shape: tuple[int, ...], out_dim: int, width: int = 64) -> nn.Module:
    """A small fast VGG-style CNN (3 stages of conv-BN-ReLU, pooling): CIFAR in GPU-minutes."""
    _check_positive(width=width)
    c = in_shape[0]
    return nn.Sequential(
        *_conv_bn(c, width),
        *_conv_bn(width, width),
        nn.MaxPool2d(2),
        *_conv_bn(width, 2 * width),
        *_conv_bn(2 * width, 2 * width),
        nn.MaxPool2d(2),
        *_conv_bn(2 * width, 4 * width),
        *_conv_bn(4 * width, 4 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, out_dim),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act = nn.ReLU(True)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.act(self.body(x) + self.skip(x))


@MODELS.register("resnet18")
def resnet18(in_shape: tuple[int, ...], out_dim: int, width: int = 64) -> nn.Module:
    """CIFAR ResNet-18 (He et al., CVPR 2016; 3x3 stem, no max-pool), the LDR paper's model."""
    _check_positive(width=width)
    layers: list[nn.Module] = [
        nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
    ]
    c = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        out = width * 2**stage
        layers += [_BasicBlock(c, out, stride), _BasicBlock(out, out, 1)]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out_dim)]
    return nn.Sequential(*layers)


def _airbench_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU(),
    ]


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x * self.factor


@MODELS.register("airbench")
def airbench(
    in_shape: tuple[int, ...], out_dim: int, widths: str = "64,256,256", stem: int = 24
) -> nn.Module:
    """A fast CIFAR net in the spirit of airbench94 (Jordan, 2024): 2x2 stem conv, three
    conv-pool-BN-GELU blocks, global max-pool, a linear head scaled by 1/9.

    Only the architecture is taken; airbench's other speed tricks (patch-whitening stem init,
    lookahead, test-time flips, label smoothing) are not, so its 94%-in-seconds figure does not
    transfer as is. Intended with bf16 autocast, channels_last and torch.compile on CUDA.
    """
    sizes = [int(w) for w in widths.split(",")]
    if len(sizes) != 3 or min(sizes) <= 0 or stem <= 0:
        raise ValueError(f"widths must be three positive ints and stem > 0, got {widths!r}, {stem}")
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], stem, 2, padding=0, bias=True), nn.GELU()]
    c = stem
    for width in sizes:
        layers += _airbench_block(c, width)
        c = width
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c, out_dim, bias=False),
               _Scale(1 / 9)]
    return nn.Sequential(*layers)


# Model modules beside this one register themselves on import.
from lossbench.models import transformer  # noqa: E402, F401
