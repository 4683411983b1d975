"""Compile mamba_ssm's / causal_conv1d's CUDA extension for the local GPU only.

The packages' own setup.py files compile for every architecture from sm_75 to sm_121,
which takes many minutes; on a cluster node only the card in it matters. This builds the
extension named by ``--extension`` from an unpacked sdist with
``torch.utils.cpp_extension.load`` and the card's compute capability, then copies the
shared object into ``--target`` (a directory on ``sys.path``).

Usage:
    python tools/build_cuda_kernels.py --sdist-dir mamba_ssm-2.3.2.post1 \
        --extension selective_scan_cuda --target "$(python -c 'import site; print(site.getsitepackages()[0])')"
"""

import argparse
import glob
import os
import shutil
import sys
import time

# extension name -> (source globs relative to the sdist root, include dir)
EXTENSIONS = {
    "selective_scan_cuda": (
        ["csrc/selective_scan/selective_scan.cpp", "csrc/selective_scan/selective_scan_*.cu"],
        "csrc/selective_scan",
    ),
    "causal_conv1d_cuda": (["csrc/causal_conv1d.cpp", "csrc/causal_conv1d_*.cu"], "csrc"),
}

NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
]


def build(sdist_dir: str, extension: str, target: str) -> str:
    """Compile ``extension`` from ``sdist_dir`` for the local card; return the .so path."""
    import torch
    from torch.utils.cpp_extension import load

    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device visible; the kernels are built for the local card")
    if extension not in EXTENSIONS:
        raise SystemExit(f"error: --extension must be one of {sorted(EXTENSIONS)}, got {extension}")
    patterns, include = EXTENSIONS[extension]
    sources = sorted(s for p in patterns for s in glob.glob(os.path.join(sdist_dir, p)))
    if not sources:
        raise SystemExit(f"error: no sources for {extension} under {sdist_dir} (not an unpacked sdist?)")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    build_dir = os.path.join(sdist_dir, f"build_{extension}_sm{arch}")
    os.makedirs(build_dir, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    start = time.time()
    print(f"building {extension} for sm_{arch} from {len(sources)} sources ...", flush=True)
    module = load(
        name=extension,
        sources=sources,
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS,  # the arch comes from TORCH_CUDA_ARCH_LIST
        extra_include_paths=[os.path.join(sdist_dir, include)],
        build_directory=build_dir,
        verbose=False,
    )
    os.makedirs(target, exist_ok=True)
    destination = os.path.join(target, os.path.basename(module.__file__))
    shutil.copy2(module.__file__, destination)
    print(f"built {destination} in {time.time() - start:.0f} s", flush=True)
    return destination


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist-dir", required=True, help="unpacked sdist (holds csrc/)")
    parser.add_argument("--extension", required=True, choices=sorted(EXTENSIONS))
    parser.add_argument("--target", required=True, help="directory on sys.path for the .so")
    args = parser.parse_args(argv)
    build(args.sdist_dir, args.extension, args.target)


if __name__ == "__main__":
    sys.exit(main())
