"""The Triton kernels compile for a CUDA card (sm90) on this machine, GPU or not.

The CPU tests of tests/test_triton_scan.py run the kernels in Triton's interpreter,
which does not compile them; tests/compile_triton_kernels.py runs Triton's compiler
(PTX and cubin for sm90) in a process without ``TRITON_INTERPRET``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (tools/install.sh installs it)")

ROOT = Path(__file__).resolve().parents[1]


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "compile_triton_kernels.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    compiled = [line for line in out.stdout.splitlines() if line.startswith("ok ")]
    assert len(compiled) == 16, out.stdout  # 4 kernels x 2 dtypes x with/without lengths
