"""Compiles the Triton kernels of espnet_mamba.nn for a CUDA card, on any machine.

Triton's compiler runs on the CPU: it lowers a kernel to PTX and assembles a cubin for
a given target without a GPU. Triton's interpreter (``TRITON_INTERPRET=1``, what the
CPU tests run) never compiles, so errors that only the compiler sees (a loop-carried
variable that changes its shape, a type mismatch) pass there; this script finds them.

Usage: python tests/compile_triton_kernels.py [--arch 90 80]   (exit 1 on a failure)
"""

import argparse
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from espnet_mamba.nn import triton_conv, triton_scan_kernels  # noqa: E402

# Pointers to activations (and their gradients) take the input dtype; the others are
# the float32 parameters, states and accumulators, or the int32 lengths.
ACTIVATIONS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "gy_ptr", "gu_ptr", "gdelta_ptr",
               "gz_ptr", "x_ptr", "out_ptr", "gout_ptr", "gx_ptr"}
FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, SAVE_STATES=True, SILU=True)
SCAN_BLOCKS = dict(BLOCK_D=8, BLOCK_N=16, BLOCK_T=16)
CONV_BLOCKS = dict(K=4, BLOCK_C=32, BLOCK_T=64)


def signature(kernel, dtype: str, constants: dict):
    """Triton's signature of ``kernel`` for activations of ``dtype`` (``"fp32"``, ``"bf16"``)."""
    types, constexprs = {}, {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            types[name] = "constexpr"
            constexprs[name] = constants[name]
        elif name.endswith("_ptr"):
            types[name] = f"*{dtype}" if name in ACTIVATIONS else ("*i32" if name == "len_ptr" else "*fp32")
        else:
            types[name] = "i32"
    return types, constexprs


def compile_all(archs):
    """Compiles every kernel variant for each arch; returns the failures as lines."""
    kernels = [(triton_scan_kernels.scan_fwd_kernel, SCAN_BLOCKS), (triton_scan_kernels.scan_bwd_kernel, SCAN_BLOCKS),
               (triton_conv._conv_fwd_kernel, CONV_BLOCKS), (triton_conv._conv_bwd_kernel, CONV_BLOCKS)]
    failures = []
    for arch in archs:
        for kernel, blocks in kernels:
            for dtype in ("fp32", "bf16"):
                for has_lengths in (False, True):
                    constants = dict(FLAGS, HAS_LENGTHS=has_lengths, ACC=tl.float32, **blocks)
                    types, constexprs = signature(kernel, dtype, constants)
                    label = f"sm{arch} {kernel.__name__} {dtype} lengths={has_lengths}"
                    try:
                        compiled = triton.compile(ASTSource(fn=kernel, signature=types, constexprs=constexprs),
                                                  target=GPUTarget("cuda", arch, 32))
                        assert compiled.asm.get("cubin"), "no cubin"
                        print(f"ok {label}")
                    except Exception as error:  # noqa: BLE001 - every failure is reported
                        failures.append(f"{label}: {type(error).__name__}: {error}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (default: 90, the H100/H200)")
    failures = compile_all(parser.parse_args().arch)
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
