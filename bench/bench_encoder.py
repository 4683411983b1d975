"""Forward+backward time and peak memory: ConBiMamba vs ESPnet's Conformer encoder.

Compares, at the same width and depth, on a batch of equal-length utterances of 80-dim
fbank frames (100 frames per second, Conv2d subsampling 4x in every encoder):
  - ConBiMamba with mamba_ssm's fused kernels (scan backend "cuda"),
  - ConBiMamba with the Triton kernels of espnet_mamba.nn (scan backend "triton"; no
    compiled extension),
  - ESPnet's ConformerEncoder (macaron FFN, rel-pos self-attention, conv kernel 31),
  - ConBiMamba with our pure-PyTorch scan (backend "torch").
Each cell is the median of --repeats timed steps after --warmup steps (CUDA events), and
the peak allocated memory of one step. Prints a markdown table and writes it to --out.

Usage:
    python bench/bench_encoder.py --out docs/bench_encoder.md              # GPU, full grid
    python bench/bench_encoder.py --small --out /tmp/bench_encoder.md      # CPU smoke run
    python bench/bench_encoder.py --widths 512 --seconds 15 --profile prof/ --out t.md  # + kernel tables
"""

import argparse
import datetime
import json
import os

import torch
from step_timing import median_step_time

FRAMES_PER_SECOND = 100
FEATURE_DIM = 80
KINDS = ["conbimamba-cuda", "conbimamba-triton", "conformer", "conbimamba-torch"]


def build_encoder(kind: str, d_model: int, num_blocks: int):
    """Return an encoder module of ``kind`` (one of :data:`KINDS`)."""
    if kind == "conformer":
        from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

        return ConformerEncoder(
            input_size=FEATURE_DIM,
            output_size=d_model,
            attention_heads=d_model // 64,
            linear_units=4 * d_model,
            num_blocks=num_blocks,
            input_layer="conv2d",
            macaron_style=True,
            rel_pos_type="latest",
            pos_enc_layer_type="rel_pos",
            selfattention_layer_type="rel_selfattn",
            use_cnn_module=True,
            cnn_module_kernel=31,
        )
    from espnet_mamba.encoder import ConBiMambaEncoder

    backend = kind.split("-")[1]
    return ConBiMambaEncoder(
        input_size=FEATURE_DIM,
        output_size=d_model,
        linear_units=4 * d_model,
        num_blocks=num_blocks,
        input_layer="conv2d",
        cnn_module_kernel=31,
        mamba_backend=backend,
    )


def make_step(encoder, batch: int, seconds: float, device, dtype):
    """A function running one training step (forward, backward) on ``batch`` utterances of ``seconds``."""
    frames = int(seconds * FRAMES_PER_SECOND)
    xs = torch.randn(batch, frames, FEATURE_DIM, device=device)
    ilens = torch.full((batch,), frames, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            out, _, _ = encoder(xs, ilens)
        out.float().pow(2).mean().backward()
        encoder.zero_grad(set_to_none=True)

    return step


def profile_step(encoder, batch: int, seconds: float, device, dtype, path: str) -> None:
    """Writes the operator tables of one training step (torch.profiler; sorted by device time, then by
    host time) to ``path``."""
    step = make_step(encoder, batch, seconds, device, dtype)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_keys = ["self_cuda_time_total", "self_cpu_time_total"] if device.type == "cuda" else ["self_cpu_time_total"]
    with open(path, "w") as f:
        for sort_by in sort_keys:  # device time, then host time (what a launch-bound step waits for)
            f.write(f"sorted by {sort_by}\n")
            f.write(prof.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=60) + "\n\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="markdown file for the table (a .json beside it)")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 15, 30, 60])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-blocks", type=int, default=12)
    parser.add_argument("--dtype", choices=["float32", "tfloat32", "bfloat16"], default="float32",
                        help="float32; tfloat32: float32 with TF32 matrix products (ESPnet's --use_tf32); "
                        "bfloat16: autocast (ESPnet's --use_amp with bf16)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny CPU smoke configuration")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=KINDS, help="encoders to time")
    parser.add_argument("--profile", metavar="DIR", help="also write each cell's torch.profiler table into DIR")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kinds = args.kinds
    if args.small:
        args.widths, args.seconds, args.batch, args.num_blocks = [64], [2], 2, 2
        args.warmup, args.repeats = 1, 2
    if device.type != "cuda":
        kinds = [kind for kind in kinds if kind not in ("conbimamba-cuda", "conbimamba-triton")]
    if args.dtype == "tfloat32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"

    rows = []
    for width in args.widths:
        for seconds in args.seconds:
            row = {"d_model": width, "seconds": seconds}
            for kind in kinds:
                torch.manual_seed(0)
                encoder = build_encoder(kind, width, args.num_blocks).to(device).train()
                try:
                    step = make_step(encoder, args.batch, seconds, device, dtype)
                    t, peak = median_step_time(step, device, args.warmup, args.repeats)  # peak above the model
                    row[kind] = {"ms": t * 1000, "peak_gib": peak / 2**30}
                    if args.profile:
                        os.makedirs(args.profile, exist_ok=True)
                        name = f"{kind}_d{width}_{seconds:g}s_{args.dtype}.txt"
                        profile_step(encoder, args.batch, seconds, device, dtype, os.path.join(args.profile, name))
                except torch.cuda.OutOfMemoryError:
                    row[kind] = {"ms": float("nan"), "peak_gib": float("nan"), "oom": True}
                del encoder
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(json.dumps({**{k: v for k, v in row.items() if k in ("d_model", "seconds")}, kind: row[kind]}), flush=True)
            rows.append(row)

    header = ["d", "utt (s)"] + [f"{k} ms" for k in kinds] + [f"{k} GiB" for k in kinds]
    lines = [
        f"Encoder forward+backward, {args.num_blocks} layers, batch {args.batch}, {args.dtype}, "
        f"{card}, {datetime.date.today()}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [str(row["d_model"]), f"{row['seconds']:g}"]
        cells += ["OOM" if row[k].get("oom") else f"{row[k]['ms']:.1f}" for k in kinds]
        cells += ["OOM" if row[k].get("oom") else f"{row[k]['peak_gib']:.2f}" for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as f:
        f.write(table + "\n")
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump({"card": card, "dtype": args.dtype, "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
