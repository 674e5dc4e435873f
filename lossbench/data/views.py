"""Views turn stored tensors into model inputs at batch time, so images can stay uint8 on the
device (4x less memory) and be standardised only when a batch is drawn."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

View = Callable[[torch.Tensor], torch.Tensor]


def image_view(x_fit: np.ndarray, device: torch.device, sample: int = 8192) -> View:
    """uint8 images -> float, standardised per channel with statistics of ``x_fit`` (the training
    images only; an even subsample of at most ``sample`` of them)."""
    pick = x_fit[np.linspace(0, len(x_fit) - 1, min(sample, len(x_fit))).astype(int)]
    pixels = torch.as_tensor(pick, dtype=torch.float32) / 255.0
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True).to(device)
    std = pixels.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6).to(device)
    return lambda x: (x.float() / 255.0 - mean) / std


def identity(x: torch.Tensor) -> torch.Tensor:
    """The view of tabular data: already float features."""
    return x
