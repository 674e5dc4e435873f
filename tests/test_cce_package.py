"""lossbench's Cut Cross-Entropy against Apple's cut-cross-entropy package (dev extra), through
benchmarks/cce_crosscheck.py in a subprocess (on CPU it switches Triton to its interpreter,
which must happen before Triton is first imported)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("cut_cross_entropy") is None,
                    reason="cut-cross-entropy is not installed (dev extra; it needs triton)")
def test_cce_matches_the_cut_cross_entropy_package() -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cce_crosscheck.py"), "--sizes", "48x200x16",
         "--json"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    # Both within their precision of CE in float64 on the same (16-bit) inputs: the package
    # computes in half precision, lossbench's CCE here in float32.
    assert row["package_loss"] < 1e-2 and row["lossbench_loss"] < 1e-5
    for part in ("grad_e", "grad_c"):
        assert row[f"package_{part}"] < 1e-2 * row["grad_scale"]
        assert row[f"lossbench_{part}"] < 1e-4 * row["grad_scale"]
