"""Loading the fused CPU scan kernel must not change the process's floating-point mode."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_kernel_leaves_subnormals_alone() -> None:
    code = (
        "import sys\n"
        "from vimcan_core.model.scan_cpu import load_kernel\n"
        "if load_kernel() is None: sys.exit(3)\n"
        "tiny = 2.2250738585072014e-308\n"
        "assert tiny / 4 != 0.0, 'flush-to-zero is on: subnormals are lost'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode == 3:
        pytest.skip("no C compiler: the kernel is not built here")
    assert res.returncode == 0, res.stderr
