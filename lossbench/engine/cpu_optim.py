"""SGD and AdamW for CPU training without ``torch.optim``, with ``torch.optim``'s numbers.

Why: every ``torch.optim.Optimizer`` imports ``torch._dynamo`` on first use -- its
``add_param_group``, ``zero_grad`` and ``step`` go through ``torch._disable_dynamo``, which imports
it on the first call whatever ``foreach``/``fused``/``differentiable``/``capturable`` say -- and
that import costs 1-3 s in every fresh process (a CLI call, each process-pool worker).

On CPU torch updates one tensor at a time (its ``_single_tensor_*`` paths: ``foreach`` defaults
to off there). These classes make the same tensor operations in the same order, so they give the
same bits (tested against ``torch.optim`` step by step). On CUDA torch defaults to multi-tensor
kernels, so ``lossbench.engine.train`` keeps ``torch.optim`` there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class CpuOptimizer:
    """Parameter groups (``defaults`` filled in, as ``torch.optim`` does), per-parameter state and
    ``zero_grad``; subclasses implement ``step``."""

    def __init__(self, groups: Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self.param_groups = [defaults | dict(group) for group in groups]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (``set_to_none``, the only mode the engine uses)."""
        if not set_to_none:
            raise ValueError("zero_grad drops gradients here; set_to_none=False is not offered")
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class CpuSGD(CpuOptimizer):
    """SGD with momentum (PyTorch's form: ``buf = m * buf + g``, no dampening), Nesterov and L2
    weight decay added to the gradient, as ``torch.optim.SGD``."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum")  # as torch.optim.SGD
        super().__init__(groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=decay) if decay != 0 else p.grad
                if momentum != 0:
                    buf = self.state.get(p, {}).get("momentum_buffer")
                    if buf is None:
                        buf = grad.detach().clone()
                        self.state[p] = {"momentum_buffer": buf}
                    else:
                        buf.mul_(momentum).add_(grad)
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(grad, alpha=-lr)


class CpuAdamW(CpuOptimizer):
    """AdamW (Loshchilov & Hutter, ICLR 2019, Algorithm 2): decoupled weight decay
    ``p *= 1 - lr * wd``, then the bias-corrected Adam step, as ``torch.optim.AdamW`` (no
    amsgrad)."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        "step": 0,
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                state["step"] += 1
                if decay != 0:
                    p.mul_(1 - lr * decay)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = float(state["step"])
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
