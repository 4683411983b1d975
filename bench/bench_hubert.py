"""Pretraining throughput: Mamba-HuBERT vs Transformer HuBERT (ESPnet SSL task).

One training step of ESPnet's SSL model (wav2vec CNN, masking, HuBERT loss, Adam)
built from the recipe's iteration-1 configs (HuBERT-base shapes: CNN 512 channels,
stride 320, d 768, FFN 3072, 12 layers; ConBiMamba kernel 31) on a batch of
equal-length random waveforms with random targets. Reports the median step time
after --warmup steps, the throughput in seconds of audio per second, and the peak
allocated memory. Mamba-HuBERT runs with mamba_ssm's fused scan when it imports
("mamba_hubert"), and with the pure-PyTorch scan when --torch_scan is given
("mamba_hubert-torch"). Prints a markdown table and writes it to --out (a .json
beside it).

Without CUDA the benchmark is skipped (exit status 0) unless --small is given,
which runs the tiny recipe configs on the CPU in seconds.

Usage:
    python bench/bench_hubert.py --out docs/bench_hubert.md               # GPU, bf16, paper shapes
    python bench/bench_hubert.py --small --out bench_hubert_small.md        # CPU smoke run
"""

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import torch
import yaml
from step_timing import median_step_time

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "egs2" / "librispeech_100" / "mamba_mi" / "conf" / "ssl"
SAMPLE_RATE = 16000


def build_model(kind: str, small: bool, device: torch.device):
    """ESPnet SSL model for ``kind`` in {"mamba_hubert", "mamba_hubert-torch", "hubert"}, and its classes."""
    from espnet2.tasks.ssl import SSLTask

    from espnet_mamba.registry import register

    register()  # conbimamba

    name = kind.split("-")[0]
    path = CONF / "tiny" / f"{name}.yaml" if small else CONF / f"{name}_it1.yaml"
    config = yaml.safe_load(path.read_text())
    if name == "mamba_hubert":
        backend = "torch" if kind.endswith("torch") else "auto"
        config["encoder_conf"] = dict(config["encoder_conf"], mamba_backend=backend)
    n_classes = config["loss"][0]["conf"]["num_classes"]
    # As ESPnet reads a --config file: its values become parser defaults, which the
    # options' own types then convert (e.g. "init: none" -> None).
    parser = SSLTask.get_parser()
    parser.set_defaults(**copy.deepcopy(config))
    args = parser.parse_args([])
    args.token_list = [str(i) for i in range(n_classes)] + ["<unk>"]
    torch.manual_seed(0)
    return SSLTask.build_model(args).to(device).train(), n_classes, path


def time_step(model, n_classes: int, batch: int, seconds: float, device, dtype, warmup: int, repeats: int):
    """Median seconds of one training step (forward, backward, Adam) and peak memory in bytes."""
    samples = int(seconds * SAMPLE_RATE)
    frames = (samples - 400) // 320 + 1
    speech = 0.1 * torch.randn(batch, samples, device=device)
    speech_lengths = torch.full((batch,), samples, dtype=torch.long, device=device)
    text = torch.randint(0, n_classes, (batch, frames), device=device)
    text_lengths = torch.full((batch,), frames, dtype=torch.long, device=device)
    optim = torch.optim.Adam(model.parameters(), lr=1e-5)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            loss, _, _ = model(speech, speech_lengths, text, text_lengths)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    return median_step_time(step, device, warmup, repeats, peak_above_start=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="markdown file for the table (a .json beside it)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 10, 20], help="utterance lengths")
    parser.add_argument("--batch", type=int, default=8, help="utterances per step")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="autocast dtype (default: bfloat16 on CUDA, float32 with --small on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--torch_scan", action="store_true", help="also time Mamba-HuBERT with the PyTorch scan")
    parser.add_argument("--small", action="store_true", help="tiny configs, short batch: a CPU smoke run")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        print("bench_hubert.py: SKIPPED: CUDA is not available (the benchmark is for GPUs; "
              "--small runs a tiny version on the CPU)")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    if args.small:
        args.seconds, args.batch, args.warmup, args.repeats = [2], 2, 1, 2
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    card = torch.cuda.get_device_name() if cuda else "CPU"

    from espnet_mamba.nn.selective_scan import cuda_scan_available

    kinds = ["mamba_hubert", "hubert"]
    if args.torch_scan and cuda and cuda_scan_available():
        kinds.insert(1, "mamba_hubert-torch")
    scan = "mamba_ssm (cuda)" if cuda and cuda_scan_available() else "pytorch"

    rows, configs, params = [], {}, {}
    for seconds in args.seconds:
        row = {"seconds": seconds, "batch": args.batch}
        for kind in kinds:
            model, n_classes, path = build_model(kind, args.small, device)
            configs[kind] = str(path.relative_to(ROOT))
            params[kind] = sum(p.numel() for p in model.parameters())
            try:
                t, peak = time_step(model, n_classes, args.batch, seconds, device, dtype, args.warmup, args.repeats)
                row[kind] = {"step_s": t, "audio_s_per_s": args.batch * seconds / t, "peak_gib": peak / 2**30}
            except torch.cuda.OutOfMemoryError:
                row[kind] = {"oom": True}
            del model
            if cuda:
                torch.cuda.empty_cache()
            print(json.dumps({"seconds": seconds, kind: row[kind]}), flush=True)
        rows.append(row)

    def cell(entry, key, fmt):
        return "OOM" if entry.get("oom") else format(entry[key], fmt)

    header = ["utt (s)", "batch"] + [f"{k} audio s/s" for k in kinds] + [f"{k} step s" for k in kinds]
    header += [f"{k} GiB" for k in kinds] + ["Mamba/Transformer throughput"]
    lines = [
        f"HuBERT pretraining step (forward, backward, Adam; ESPnet SSL task), {dtype_name}, {card}, "
        f"Mamba scan: {scan}, {datetime.date.today()}",
        "",
        "Configs: " + ", ".join(f"{k}: {v} ({params[k] / 1e6:.2f}M parameters)" for k, v in configs.items()),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"{row['seconds']:g}", str(row["batch"])]
        cells += [cell(row[k], "audio_s_per_s", ".1f") for k in kinds]
        cells += [cell(row[k], "step_s", ".3f") for k in kinds]
        cells += ["-" if not cuda or row[k].get("oom") else f"{row[k]['peak_gib']:.2f}" for k in kinds]
        a, b = row["mamba_hubert"], row["hubert"]
        cells.append("-" if a.get("oom") or b.get("oom") else f"{a['audio_s_per_s'] / b['audio_s_per_s']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(table + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"card": card, "dtype": dtype_name, "scan": scan, "configs": configs, "params": params, "rows": rows},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
