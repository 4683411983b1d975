"""Do our pure-PyTorch selective scan and mamba_ssm's CUDA kernel agree?

On one set of random inputs (and one Mamba layer's weights), runs both backends in
float32 and bfloat16 and reports, for the output and every input gradient, the relative
error max|a - b| / max|b| against a float64 run of the torch backend. Also times one
forward+backward of the scan alone at the lengths of 5/15/30/60 s utterances after 4x
subsampling (125/375/750/1500 frames). Prints a markdown table and writes it to --out.

Usage: python bench/check_scan_backends.py --out docs/scan_backends.md   (needs CUDA + mamba_ssm)
"""

import argparse
import datetime

import torch
from step_timing import median_step_time

from espnet_mamba.nn.mamba import Mamba
from espnet_mamba.nn.selective_scan import cuda_scan_available, selective_scan


def scan_inputs(batch, d_inner, d_state, length, device, seed=0):
    """Random scan inputs shaped like a Mamba layer's (softplus on delta, z gate, D)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(
        u=r(batch, d_inner, length),
        delta=r(batch, d_inner, length) * 0.5 - 2.0,
        A=-torch.exp(r(d_inner, d_state) * 0.5),
        B=r(batch, d_state, length),
        C=r(batch, d_state, length),
        D=r(d_inner),
        z=r(batch, d_inner, length),
        delta_bias=r(d_inner) * 0.1,
    )
    return {k: v.to(device) for k, v in inputs.items()}


def run_scan(inputs, backend, dtype):
    """Output and gradients of sum(y * w) for a fixed random w."""
    leaves = {}
    for k, v in inputs.items():
        cast = v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v.to(torch.float32 if dtype != torch.float64 else dtype)
        leaves[k] = cast.detach().requires_grad_(True)
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    w = torch.linspace(-1, 1, y.numel(), device=y.device, dtype=torch.float64).view_as(y)
    (y.double() * w).sum().backward()
    return {"y": y.detach().double(), **{f"d{k}": v.grad.double() for k, v in leaves.items()}}


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def time_scan(inputs, backend, repeats=10):
    """Median milliseconds of the scan's forward+backward on CUDA with ``backend``."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items()}

    def step():
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        y.sum().backward()

    return median_step_time(step, torch.device("cuda"), warmup=1, repeats=repeats)[0] * 1000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not (torch.cuda.is_available() and cuda_scan_available()):
        raise SystemExit("needs a CUDA device and mamba_ssm's selective_scan_cuda extension")
    device = torch.device("cuda")
    card = torch.cuda.get_device_name()
    lines = [f"Selective scan: torch vs mamba_ssm, {card}, {datetime.date.today()}", ""]

    inputs = scan_inputs(batch=2, d_inner=64, d_state=16, length=777, device=device)
    reference = run_scan(inputs, "torch", torch.float64)
    lines += ["Relative error max|x - ref| / max|ref| against the torch backend in float64 "
              "(B 2, D 64, N 16, L 777):", ""]
    names = list(reference)
    lines += ["| backend | dtype | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for dtype in (torch.float32, torch.bfloat16):
        for backend in ("torch", "cuda"):
            result = run_scan(inputs, backend, dtype)
            errors = [f"{relative_error(result[n], reference[n]):.1e}" for n in names]
            lines.append(f"| {backend} | {str(dtype)[6:]} | " + " | ".join(errors) + " |")

    torch.manual_seed(0)
    layer = Mamba(d_model=256, backend="torch").to(device)
    x = torch.randn(4, 500, 256, device=device)
    y_torch = layer(x)
    layer.backend = "cuda"
    y_cuda = layer(x)
    lines += ["", f"Mamba layer (d_model 256, B 4, L 500, fp32), same weights: relative output "
              f"difference torch vs cuda = {relative_error(y_torch.double(), y_cuda.double()):.1e}", ""]

    lines += ["Scan forward+backward, B 8, D 1024 (d_model 512), N 16, fp32, median of 10 (ms):", "",
              "| frames | torch | cuda | torch/cuda |", "|---|---|---|---|"]
    for frames in (125, 375, 750, 1500):
        inputs = scan_inputs(batch=8, d_inner=1024, d_state=16, length=frames, device=device)
        t_torch, t_cuda = time_scan(inputs, "torch"), time_scan(inputs, "cuda")
        lines.append(f"| {frames} | {t_torch:.2f} | {t_cuda:.2f} | {t_torch / t_cuda:.1f} |")
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
