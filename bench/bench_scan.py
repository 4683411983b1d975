"""Selective scan alone, forward+backward: Triton kernels vs mamba_ssm's kernel vs torch.

Inputs shaped as one Mamba layer's of d_model 512 (B 8, D 1024, N 16, delta softplus,
delta bias, D skip, z gate) at the frame counts of 15/30/60 s utterances after 4x
subsampling (375/750/1500), in float32 and bfloat16 (u, delta, B, C, z in that dtype;
A, D, bias float32). Each cell is the median of --repeats forward+backward steps after
--warmup (CUDA events). Achieved GB/s counts the bytes a fused kernel must move at
least (forward: read u, delta, z, B, C, write y; backward: read u, delta, z, B, C and
grad y, write the gradients of u, delta, z, B, C), against the card's copy bandwidth,
measured here (a device-to-device copy, bytes read + written). First call: the time
of the first forward+backward in this process, with Triton's kernel cache emptied
(--cold_cache, the default), i.e. JIT compilation included.

Usage:
    python bench/bench_scan.py --out docs/bench/scan_triton_h200.md   # a .json beside it
"""

import argparse
import datetime
import json
import os
import tempfile
import time

import torch
from step_timing import median_step_time

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def scan_inputs(batch, dim, n_state, length, dtype, seed=0):
    """Random inputs of one Mamba layer's scan, on CUDA, as leaves that need gradients."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    inputs = dict(
        u=r(batch, dim, length).to(dtype),
        delta=(r(batch, dim, length) * 0.5 - 2.0).to(dtype),
        A=-torch.exp(r(dim, n_state) * 0.5),
        B=r(batch, n_state, length).to(dtype),
        C=r(batch, n_state, length).to(dtype),
        D=r(dim),
        z=r(batch, dim, length).to(dtype),
        delta_bias=r(dim) * 0.1,
    )
    return {k: v.cuda().requires_grad_() for k, v in inputs.items()}


def min_bytes(batch, dim, n_state, length, dtype) -> int:
    """Bytes a fused forward+backward must read and write at least."""
    size = torch.finfo(dtype).bits // 8
    per_channel = (3 + 1) + (4 + 3)  # forward: u, delta, z in, y out; backward: +grad y in, 3 grads out
    per_state = 2 + (2 + 2)  # B, C in (forward); B, C in and their gradients out (backward)
    return size * (per_channel * batch * dim * length + per_state * batch * n_state * length)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), median of 10."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds, _ = median_step_time(lambda: dst.copy_(src), torch.device("cuda"), warmup=3, repeats=10)
    return 2 * src.numel() / seconds / 1e9


def step_fn(inputs, backend):
    """One forward+backward of the scan on ``backend``."""
    from espnet_mamba.nn.selective_scan import selective_scan  # after TRITON_CACHE_DIR is set

    def step():
        y = selective_scan(**inputs, delta_softplus=True, backend=backend)
        y.backward(torch.ones_like(y))

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="markdown file for the table (a .json beside it)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[375, 750, 1500])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--backends", nargs="+", default=["triton", "cuda", "torch"],
                        choices=["triton", "cuda", "torch"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no_cold_cache", dest="cold_cache", action="store_false",
                        help="keep Triton's kernel cache (first calls then skip compilation)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_scan.py needs a CUDA device")
    if args.cold_cache:  # before Triton is imported
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_cache_")
    from espnet_mamba.nn.selective_scan import cuda_scan_available, triton_scan_available

    available = {"triton": triton_scan_available(), "cuda": cuda_scan_available(), "torch": True}
    backends = [b for b in args.backends if available[b]]
    skipped = [b for b in args.backends if not available[b]]
    card = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth()

    rows, first_calls = [], {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for length in args.lengths:
            inputs = scan_inputs(args.batch, args.dim, args.state, length, dtype)
            row = dict(dtype=dtype_name, length=length, ms={}, gbps={})
            for backend in backends:
                step = step_fn(inputs, backend)
                if (backend, dtype_name) not in first_calls:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    step()
                    torch.cuda.synchronize()
                    first_calls[(backend, dtype_name)] = time.perf_counter() - start
                seconds, _ = median_step_time(step, torch.device("cuda"), args.warmup, args.repeats)
                row["ms"][backend] = seconds * 1000
                row["gbps"][backend] = min_bytes(args.batch, args.dim, args.state, length, dtype) / seconds / 1e9
            rows.append(row)
            del inputs

    header = ["dtype", "frames"] + [f"{b} ms" for b in backends]
    header += [f"{b} GB/s (% of copy)" for b in backends]
    if "triton" in backends:
        header += ["torch / triton", "cuda / triton"]
    lines = [
        f"Selective scan forward+backward, {card}, {datetime.date.today()}, torch {torch.__version__}",
        f"B {args.batch}, D {args.dim}, N {args.state}; median of {args.repeats} steps (ms); "
        f"GB/s = minimum bytes moved / time; card copy bandwidth {bandwidth:.0f} GB/s (measured).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"{row['ms'][b]:.3f}" for b in backends]
        cells += [f"{row['gbps'][b]:.0f} ({100 * row['gbps'][b] / bandwidth:.0f}%)" for b in backends]
        if "triton" in backends:
            for other in ("torch", "cuda"):
                ratio = row["ms"][other] / row["ms"]["triton"] if other in row["ms"] else None
                cells.append("-" if ratio is None else f"{ratio:.2f}")
        lines.append(f"| {row['dtype']} | {row['length']} | " + " | ".join(cells) + " |")
    lines += ["", "First call (s, forward+backward, compilation included"
              + (", empty Triton cache):" if args.cold_cache else "):"), ""]
    lines += [f"- {b} {d}: {t:.1f}" for (b, d), t in first_calls.items()]
    if skipped:
        lines += ["", f"Not measured (not importable here): {', '.join(skipped)}"]
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as f:
        f.write(table + "\n")
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump(dict(card=card, date=str(datetime.date.today()), torch=torch.__version__,
                       copy_gbps=bandwidth, args=vars(args), rows=rows,
                       first_call_s={f"{b}-{d}": t for (b, d), t in first_calls.items()}), f, indent=1)


if __name__ == "__main__":
    main()
