"""Cross-check lossbench's Cut Cross-Entropy against Apple's ``cut-cross-entropy`` package.

The package's CCE is a set of Triton kernels. On a CUDA machine they run natively (inputs in
bfloat16, which its backward requires). Without CUDA they run in Triton's interpreter
(``TRITON_INTERPRET=1``, set here before Triton is imported) on float16 inputs (the
interpreter mishandles bfloat16). One shim makes that possible: ``libdevice.log1p``, which the
interpreter lacks, is replaced by ``log(1 + x)`` in the package's ``tl_logaddexp`` (its argument
is ``exp(min - max)`` in [0, 1], where the two agree to float32 rounding).

Both losses see the same low-precision inputs; the reference is CE on the materialised logits
in float64 from those inputs. The table prints the largest absolute differences of the
per-token loss and of both gradients (upstream gradient 1/N, a mean), for the package and for
lossbench's CCE in float32, plus the gradient scale for reading them. Run (with the package on
the path, e.g. ``pip install 'lossbench[dev]'``):

    python benchmarks/cce_crosscheck.py [--sizes 64x300x32,256x2000x64] [--filter high]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"


def load_package() -> types.ModuleType:
    """``cut_cross_entropy``, with the interpreter shim on CPU."""
    if not CUDA:
        import cut_cross_entropy.tl_utils as utils
        import triton.language as tl

        utils.tl_libdevice = types.SimpleNamespace(log1p=lambda a: tl.log(1.0 + a),
                                                   tanh=None)
    import cut_cross_entropy

    return cut_cross_entropy


def differences(package: types.ModuleType, n: int, v: int, d: int, filter_eps: str | None,
                seed: int = 0) -> dict[str, float]:
    from lossbench.losses.lm import cut_cross_entropy

    device = torch.device("cuda" if CUDA else "cpu")
    dtype = torch.bfloat16 if CUDA else torch.float16
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g).to(dtype)
    c = (torch.randn(v, d, generator=g) / d**0.25).to(dtype)
    y = torch.randint(0, v, (n,), generator=g)

    def grads(fn, e0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[no-untyped-def]
        e1, c1 = e0.clone().requires_grad_(), c0.clone().requires_grad_()
        loss = fn(e1, c1)
        ge, gc = torch.autograd.grad(loss.mean(), (e1, c1))
        return loss.detach().double().cpu(), ge.double().cpu(), gc.double().cpu()

    ref = grads(lambda a, b: F.cross_entropy(a @ b.T, y, reduction="none"),
                e.double(), c.double())
    yd = y.to(device)
    pkg = grads(lambda a, b: package.linear_cross_entropy(a, b, yd, reduction="none",
                                                          filter_eps=filter_eps),
                e.to(device), c.to(device))
    ours = grads(lambda a, b: cut_cross_entropy(a, b, y, 128, 256), e.float(), c.float())
    out: dict[str, float] = {"grad_scale": float(ref[1].abs().max())}
    for name, got in (("package", pkg), ("lossbench", ours)):
        for part, a, b in zip(("loss", "grad_e", "grad_c"), got, ref, strict=True):
            out[f"{name}_{part}"] = float((a - b).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x300x32,256x2000x64")
    parser.add_argument("--filter", default="none", choices=("none", "high"))
    parser.add_argument("--json", action="store_true", help="one JSON line per size")
    args = parser.parse_args()
    try:
        package = load_package()
    except ImportError as err:
        print(f"cut-cross-entropy cannot be imported here ({err}); pip install "
              "'lossbench[dev]' (it needs triton)", file=sys.stderr)
        raise SystemExit(2) from None
    filter_eps = None if args.filter == "none" else "high"
    rows = []
    for size in args.sizes.split(","):
        n, v, d = (int(x) for x in size.split("x"))
        rows.append({"size": size} | differences(package, n, v, d, filter_eps))
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    from rich.console import Console
    from rich.table import Table

    mode = "CUDA, bfloat16" if CUDA else "Triton interpreter on CPU, float16"
    table = Table("N x V x D", "grad scale", "pkg loss", "pkg grad_e", "pkg grad_c",
                  "ours loss", "ours grad_e", "ours grad_c",
                  title=f"max |difference| from float64 CE: cut-cross-entropy ({mode}, "
                        f"filter_eps={filter_eps}) and lossbench cce (float32)")
    for r in rows:
        table.add_row(r["size"], f"{r['grad_scale']:.2e}",
                      *(f"{r[f'{who}_{p}']:.2e}" for who in ("package", "lossbench")
                        for p in ("loss", "grad_e", "grad_c")))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
