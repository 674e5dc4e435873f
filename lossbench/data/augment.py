"""Batched on-device image augmentation: random crop with padding and horizontal flip; for
self-supervised views, SimCLR's random resized crop, flip and colour distortion.

Randomness is drawn on the CPU from the run's generator (so CPU and CUDA runs draw the same
crops) and applied with one gather on the device: no per-image Python loop, no workers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel-padded crop back to the input size, then a 50% horizontal flip."""
    n, _, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)
    cols = shifts[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


GREY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601 luma, as torchvision's ``rgb_to_grayscale``."""


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def resized_crop_flip(x: torch.Tensor, generator: torch.Generator,
                      scale: tuple[float, float] = (0.2, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``, batched: per image an
    area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, a uniform position
    inside the image, bilinear resampling back to the input size, then a 50% flip.

    Unlike torchvision, a box that does not fit (side > 1) is shrunk to fit rather than redrawn
    (ten tries, then a centre crop there): one draw per image keeps the stream simple.
    """
    n = x.shape[0]
    area = _uniform(n, *scale, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    width = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # fractions of the side
    height = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * (1 - width)
    cy = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = 0.4,
                  p: float = 0.8, grey_p: float = 0.2) -> torch.Tensor:
    """SimCLR's colour distortion on images in [0, 255], batched: with probability ``p`` a
    brightness, contrast and saturation factor each drawn from ``[1 - strength, 1 + strength]``
    (applied in that order; torchvision shuffles the order and also jitters hue, left out
    here), then with probability ``grey_p`` conversion to grey. Single-channel images get
    brightness and contrast only."""
    n, c = x.shape[:2]
    factors = _uniform(3 * n, 1 - strength, 1 + strength, generator).view(3, n, 1, 1, 1)
    apply = torch.rand(n, generator=generator) < p
    grey = torch.rand(n, generator=generator) < grey_p
    factors = torch.where(apply.view(1, n, 1, 1, 1), factors, torch.ones_like(factors))
    bright, contrast, sat = factors.to(x.device, x.dtype)
    luma_of = GREY_WEIGHTS if c == 3 else (1.0 / c,) * c
    weights = torch.tensor(luma_of, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    out = (x * bright).clamp(0, 255)
    grey_mean = (out * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    out = ((out - grey_mean) * contrast + grey_mean).clamp(0, 255)
    if c == 3:
        luma = (out * weights).sum(dim=1, keepdim=True)
        out = ((out - luma) * sat + luma).clamp(0, 255)
        luma = (out * weights).sum(dim=1, keepdim=True).expand_as(out)
        out = torch.where(grey.to(x.device).view(n, 1, 1, 1), luma, out)
    return out
