#!/usr/bin/env python3
"""Write RESULTS.md from every scored decoding under the experiment directory.

Looks for ``<exp_dir>/asr_*/decode_*/<set>/score_wer/result.json`` (stage 10)
and writes:

* the environment: date, Python, torch and ESPnet versions, git commit, corpus;
* Table I of the paper: word error rates (%) on dev, dev-other, test and
  test-other, one row per (experiment, decoding), labelled "+ Decoder" or
  "- Decoder" from the experiment's config.yaml;
* for each experiment: the configs used (training config, main model settings,
  decoding config) and the Snt/Wrd/Corr/Sub/Del/Ins/Err table of each set.

Usage:
    make_results.py --exp_dir exp --out RESULTS.md
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "utils"))
import make_table2  # noqa: E402
from score_wer import format_p  # noqa: E402

# column of Table I -> data set
TABLE_COLUMNS = (("dev", "dev_clean"), ("dev-other", "dev_other"), ("test", "test_clean"), ("test-other", "test_other"))


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def environment() -> List[str]:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown (no commit)"
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    corpus = Path("data/.done").read_text().strip() if Path("data/.done").exists() else "unknown"
    return [
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- system: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        f"- python: {platform.python_version()}",
        f"- torch: {_version('torch')}",
        f"- espnet: {_version('espnet')}",
        f"- git commit: {commit}",
        f"- data: {corpus}",
    ]


def corpus_notes() -> List[str]:
    """What the numbers can and cannot show, for the synthesized mini corpus (data/.done
    of stage 1 says which corpus); nothing for LibriSpeech."""
    done = Path("data/.done")
    if not done.exists() or "corpus=mini" not in done.read_text().split():
        return []
    return [
        "## What the mini corpus can show",
        "",
        "The mini corpus is synthesized speech (espeak-ng voices reading sentences of a",
        "~1000-word grammar; the other sets have unseen voices, faster speech and noise) and",
        "its sets are small: in a set of W words one word moves the WER by 100/W points",
        "(Wrd in the details below). Its numbers show that every stage runs and how models",
        "trained here compare with each other; they say nothing of LibriSpeech WERs. The",
        "mini preset gives Table I's models about 25 minutes of CPU training each and",
        "Table II's pretraining and downstream models a minute or two: rows no better than chance (last",
        "column) do not recognise speech at all (the recipe's README has what recognition",
        "would cost).",
        "",
    ]


def has_decoder(config: Dict) -> bool:
    """True for a hybrid CTC/attention model, False for CTC only."""
    decoder = config.get("decoder")
    ctc_weight = (config.get("model_conf") or {}).get("ctc_weight", 0.5)
    return decoder not in (None, "none") and float(ctc_weight) < 1.0


def _num_params(exp: Path) -> str:
    log = exp / "train.log"
    if not log.exists():
        return "?"
    match = None
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"Total Number of model parameters:\s*([\d.]+\s*[KMG]?)", line)
            if m:
                match = m.group(1)
    return match or "?"


def _model_summary(config: Dict) -> str:
    enc = config.get("encoder_conf") or {}
    parts = [f"encoder {config.get('encoder')}"]
    keys = ("output_size", "num_blocks", "linear_units", "d_state", "expand", "cnn_module_kernel", "input_layer")
    parts += [f"{k} {enc[k]}" for k in keys if k in enc]
    if has_decoder(config):
        dec = config.get("decoder_conf") or {}
        parts.append(f"decoder {config.get('decoder')} ({dec.get('num_blocks', '?')} blocks)")
    else:
        parts.append("no decoder")
    parts.append(f"ctc_weight {(config.get('model_conf') or {}).get('ctc_weight', 0.5)}")
    parts.append(f"max_epoch {config.get('max_epoch')}")
    return ", ".join(str(p) for p in parts)


def collect(exp_dir: Path) -> List[Dict]:
    """One entry per (experiment, decoding) holding the result of each data set."""
    entries = []
    for exp in sorted(exp_dir.glob("asr_*")):
        config_path = exp / "config.yaml"
        if not config_path.is_file():
            continue
        config = yaml.safe_load(config_path.read_text()) or {}
        for decode in sorted(exp.glob("decode_*")):
            results = {}
            for result in sorted(decode.glob("*/score_wer/result.json")):
                results[result.parent.parent.name] = json.loads(result.read_text())
            if not results:
                continue
            inference = decode / next(iter(results)) / "inference_config.yaml"
            entries.append(
                {
                    "exp": exp,
                    "decode": decode.name,
                    "config": config,
                    "decoder": has_decoder(config),
                    "results": results,
                    "inference": yaml.safe_load(inference.read_text()) if inference.exists() else {},
                }
            )
    return entries


def render(entries: List[Dict], test_sets: Sequence[str]) -> str:
    lines = [
        "# Results: ConBiMamba ASR with and without an attention decoder",
        "",
        "<!-- Written by local/make_results.py (stage 10) from the experiments present; do not edit. -->",
        "",
        "## Environment",
        "",
        *environment(),
        "",
        *corpus_notes(),
        "## Table I: WER (%)",
        "",
        "| Model | " + " | ".join(c for c, _ in TABLE_COLUMNS) + f" | experiment | decoding | {make_table2.CHANCE_HEADER} |",
        "|---|" + "---|" * len(TABLE_COLUMNS) + "---|---|---|",
    ]
    for entry in sorted(entries, key=lambda e: (not e["decoder"], str(e["exp"]), e["decode"])):
        cells = []
        for _, dset in TABLE_COLUMNS:
            r = entry["results"].get(dset)
            cells.append(f"{r['Err']:.1f}" if r else "-")
        label = "+ Decoder" if entry["decoder"] else "- Decoder"
        chance = make_table2.chance_cell(entry["results"], [dset for _, dset in TABLE_COLUMNS])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry['exp'].name} | {entry['decode']} | {chance} |")
    if not entries:
        lines.append("| (no scored decoding found) |" + " |" * (len(TABLE_COLUMNS) + 3))
    lines += ["", *make_table2.CHANCE_LEGEND, "", "## Details", ""]
    for entry in entries:
        exp, config = entry["exp"], entry["config"]
        inference = entry["inference"]
        lines += [
            f"### {exp.name} / {entry['decode']}",
            "",
            f"- training config: `{config.get('config', '?')}` (full: `{exp / 'config.yaml'}`)",
            f"- model: {_model_summary(config)}; parameters: {_num_params(exp)}",
            "- decoding: " + (", ".join(f"{k} {v}" for k, v in sorted(inference.items())) or "?"),
            "",
            "| dataset | Snt | Wrd | Corr | Sub | Del | Ins | Err | S.Err | chance Err | sign test |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        ordered = [d for d in test_sets if d in entry["results"]]
        ordered += sorted(d for d in entry["results"] if d not in ordered)
        for dset in ordered:
            r = entry["results"][dset]
            chance = ("| ? | ? |" if r.get("chance_p") is None
                      else f"| {r['chance_Err']:.1f} | {format_p(r['chance_p'])} |")
            lines.append(
                f"| {dset} | {r['snt']} | {r['wrd']} | {r['Corr']:.1f} | {r['Sub']:.1f} | {r['Del']:.1f} "
                f"| {r['Ins']:.1f} | {r['Err']:.1f} | {r['S.Err']:.1f} " + chance
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_dir", default="exp")
    parser.add_argument("--test_sets", default="dev_clean dev_other test_clean test_other")
    parser.add_argument("--out", default="RESULTS.md")
    args = parser.parse_args(argv)
    entries = collect(Path(args.exp_dir))
    text = render(entries, args.test_sets.split())
    # Keep the Table II section that stage 12 (local/make_table2.py) wrote.
    table2 = make_table2.find_section(Path(args.out).read_text(encoding="utf-8")) if os.path.exists(args.out) else None
    if table2 is not None:
        text = make_table2.replace_section(text, table2)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(entries)} decodings", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
