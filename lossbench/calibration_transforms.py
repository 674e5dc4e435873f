"""Transformed copies of the inputs, whose outputs feed the per-example CA calibrator
(``lossbench.ca_calibrator``; Liu et al., arXiv:2404.13016).

The paper transforms each image three ways: rotation, greyscale and colour jitter. The official
code ships the model's outputs on those copies, not the transform settings, so the settings are
ours (``CalibrationConfig``). What applies to lossbench's tasks:

* **images** ([N, C, H, W], already standardised): ``rotate`` by ``rotation`` degrees (bilinear,
  borders repeated, so a dark background stays dark); ``contrast``, the part of colour jitter
  that means something for a single channel (brightness of a standardised image is a shift the
  first layer can absorb), a factor per image drawn from ``[1 - c, 1 + c]`` around the image's
  mean; ``greyscale`` for three-channel images only (the channel mean of the standardised
  image, an approximation of luminance that ignores the channels' different statistics). On
  greyscale tasks (MNIST-like) greyscale is the identity and is **dropped**: two copies.
  Saturation and hue jitter are dropped everywhere (no colour on the greyscale tasks; kept
  simple on the colour ones).
* **tabular rows** (and the 8x8 digits, stored as 64 features): image transforms do not apply,
  so each copy adds independent Gaussian noise of ``input_noise`` standard deviations of each
  feature (measured on the validation inputs), ``copies`` times (three, the paper's number of
  copies). Noise probes the same thing the transforms do: whether the prediction survives a
  small change of the input.

Random draws come from a generator per (``transform_seed``, split, copy), so the validation
copies (the calibrator's training data) never depend on the test set, and are the same for every
run seed (packed runs share them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lossbench.calibration import CalibrationConfig, Views

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""(inputs, the copy's generator) -> transformed inputs, same shape and device."""


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Images [N, C, H, W] rotated by ``degrees`` about their centre."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def contrast(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Images [N, C, H, W] with contrast scaled around each image's mean by a factor per image
    drawn uniformly from ``[1 - strength, 1 + strength]``."""
    factor = 1 - strength + 2 * strength * torch.rand(len(x), generator=generator,
                                                      dtype=torch.float64)
    factor = factor.to(x.device, x.dtype).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """Three-channel images [N, 3, H, W] -> their channel mean in every channel."""
    return x.mean(dim=1, keepdim=True).expand_as(x).contiguous()


def gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator
                   ) -> torch.Tensor:
    """Rows [N, F] plus independent N(0, sigma_f^2) noise per feature."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x + (noise.to(x.device) * sigma.to(x.device, torch.float64)).to(x.dtype)


def transforms_for(cal: CalibrationConfig, x_val: torch.Tensor, image: bool
                   ) -> dict[str, Transform]:
    """The copies a task gets: name -> transform (see the module docstring)."""
    if image:
        chosen: dict[str, Transform] = {"rotate": lambda x, g: rotate(x, cal.rotation)}
        if x_val.shape[1] == 3:
            chosen["greyscale"] = lambda x, g: greyscale(x)
        chosen["contrast"] = lambda x, g: contrast(x, cal.contrast, g)
        return chosen
    sigma = cal.input_noise * x_val.double().std(dim=0).nan_to_num(0.0)
    return {f"noise{i}": (lambda x, g: gaussian_noise(x, sigma, g)) for i in range(cal.copies)}


def _generator(seed: int, split: int, copy: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, split, copy]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def transformed_outputs(cal: CalibrationConfig, x_val: torch.Tensor, x_test: torch.Tensor,
                        image: bool, predict: Callable[[torch.Tensor], torch.Tensor]) -> Views:
    """The model's outputs on every copy of the validation and the test inputs: ``predict``
    returns [N, K] (or [M, N, K] for packed members), stacked to [V, N, K] ([V, M, N, K])."""
    chosen = transforms_for(cal, x_val, image)

    def outputs(x: torch.Tensor, split: int) -> torch.Tensor:
        return torch.stack([predict(transform(x, _generator(cal.transform_seed, split, i)))
                            for i, transform in enumerate(chosen.values())])

    return outputs(x_val, 0), outputs(x_test, 1)
