#!/usr/bin/env python3
"""Write the Table II section of RESULTS.md from the scored downstream decodings.

Reads ``<exp_dir>/ft_<model>[_<tag>]_it2_L<layer>[_char]/decode_ctc{,_ngram}_*/<set>/
score_wer/result.json`` (CTC fine-tuning, without and with the 4-gram) and
``<exp_dir>/s3prl_conformer_<model>[_<tag>]_it2_L<layer>[_char]/decode_conformer_*/...``
(frozen upstream + Conformer), as local/downstream.sh leaves them (``<tag>``: a
pretraining variant, --ssl_tag), and writes Table II of the paper: WER (%) on
test-clean and test-other, one row per (experiment, decoding), beside the paper's
numbers (for the paper layout, not for variants).

RESULTS.md is shared with stage 10 (Table I): this script only replaces the text
between the lines ``<!-- BEGIN table2 ... -->`` and ``<!-- END table2 -->``
(appending the section when the file has none) and keeps everything else as it
is; the file is replaced atomically.

Usage:
    make_table2.py --exp_dir exp --test_sets "test_clean test_other" --out RESULTS.md
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "utils"))
from score_wer import CHANCE_ALPHA, CHANCE_MIN_UTTS, CHANCE_SHUFFLES  # noqa: E402

BEGIN = "<!-- BEGIN table2 (written by local/make_table2.py, stage 12; do not edit) -->"
END = "<!-- END table2 -->"
_BEGIN_RE = re.compile(r"^<!-- BEGIN table2\b.*-->$", re.MULTILINE)
_END_RE = re.compile(r"^<!-- END table2 -->$", re.MULTILINE)

_EXP_RE = re.compile(r"^(ft|s3prl_conformer)_(mamba_hubert|hubert)(?:_([A-Za-z0-9]+))?_it2_L(\d+)(_char)?$")
_NAMES = {"mamba_hubert": "Mamba-HuBERT", "hubert": "HuBERT"}
# The paper's Table II (test-clean, test-other): (model, layer, kind) -> WERs.
# The HuBERT rows are the published HuBERT-base, whose iteration 2 used layer 6.
PAPER = {
    ("mamba_hubert", 6, "ngram"): (16.68, 25.21),
    ("mamba_hubert", 9, "ngram"): (12.32, 19.56),
    ("mamba_hubert", 6, "conformer"): (11.4, 17.2),
    ("mamba_hubert", 9, "conformer"): (9.2, 15.4),
    ("hubert", 6, "ngram"): (3.4, 8.1),
    ("hubert", 6, "conformer"): (9.3, 15.1),
}
_KIND_ORDER = {"ngram": 0, "nolm": 1, "conformer": 2}
_MODEL_ORDER = {"mamba_hubert": 0, "hubert": 1}
# The column of Tables I and II on the chance level of utils/score_wer.py, and its legend.
CHANCE_HEADER = "no better than chance"
CHANCE_LEGEND = [
    "No better than chance: the sets where the hypotheses match the references of other",
    f"utterances of similar length as well as their own (utils/score_wer.py: {CHANCE_SHUFFLES} shuffles,",
    f"sign test p >= {CHANCE_ALPHA:g}; '?': not checked, e.g. a set of fewer than {CHANCE_MIN_UTTS} utterances). There the output carries nothing",
    "of the audio beyond its length: the model does not recognise speech, whatever its WER.",
]


def chance_cell(results: Dict[str, Dict], sets: Sequence[str]) -> str:
    """The sets of ``sets`` whose result (score_wer.py's result.json) is not above chance,
    ``-`` when every scored set is above chance, ``?`` when one lacks the check."""
    scored = [d for d in sets if d in results]
    if any(results[d].get("above_chance") is None for d in scored):
        return "?"
    at_chance = [d for d in scored if not results[d]["above_chance"]]
    return ", ".join(at_chance) or "-"


def decode_kind(exp_kind: str, decode_name: str) -> Optional[str]:
    """``ngram``, ``nolm`` or ``conformer`` for a decoding directory name, else None."""
    if exp_kind == "ft" and decode_name.startswith("decode_ctc_ngram"):
        return "ngram"
    if exp_kind == "ft" and decode_name.startswith("decode_ctc"):
        return "nolm"
    if exp_kind == "s3prl_conformer" and decode_name.startswith("decode_conformer"):
        return "conformer"
    return None


def row_label(model: str, layer: int, kind: str, chars: bool = False, variant: str = "") -> str:
    """Row name of Table II, e.g. ``Mamba-HuBERT (L9) fine-tuned + 4-gram`` or, for the
    variant ``nopos``, ``Mamba-HuBERT nopos (L9) fine-tuned + 4-gram``."""
    name = f"{_NAMES[model]}{' ' + variant if variant else ''} (L{layer}{', characters' if chars else ''})"
    if kind == "ngram":
        return f"{name} fine-tuned + 4-gram"
    if kind == "nolm":
        return f"{name} fine-tuned, no LM"
    return f"{name} + Conformer"


def collect(exp_dir: Path) -> List[Dict]:
    """Every scored downstream decoding under ``exp_dir``, one entry per decoding directory."""
    entries = []
    for exp in sorted(p for p in exp_dir.glob("*") if p.is_dir()):
        match = _EXP_RE.match(exp.name)
        if not match:
            continue
        exp_kind, model, variant = match.group(1), match.group(2), match.group(3) or ""
        layer, chars = int(match.group(4)), bool(match.group(5))
        for decode in sorted(exp.glob("decode_*")):
            kind = decode_kind(exp_kind, decode.name)
            if kind is None:
                continue
            results = {}
            for result in sorted(decode.glob("*/score_wer/result.json")):
                try:
                    results[result.parent.parent.name] = json.loads(result.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as e:
                    raise ValueError(f"{result}: unreadable scoring result: {e}") from e
            if results:
                entries.append(
                    {"exp": exp.name, "decode": decode.name, "model": model, "variant": variant, "layer": layer,
                     "kind": kind, "chars": chars, "results": results}
                )
    entries.sort(key=lambda e: (e["chars"], _MODEL_ORDER[e["model"]], e["variant"], e["layer"],
                                _KIND_ORDER[e["kind"]], e["decode"]))
    return entries


def render(entries: List[Dict], test_sets: Sequence[str]) -> str:
    """The Table II section (between and including the markers)."""
    lines = [
        BEGIN,
        "## Table II: WER (%) of the pretrained models on downstream ASR",
        "",
        "Fine-tuned: CTC fine-tuning of the whole pretrained model (CNN frozen), decoded",
        "with CTC beam search, with the 4-gram of stage 6 or without an LM. + Conformer:",
        "the frozen upstream (weighted sum of all layers) under a Conformer with",
        "CTC/attention, no LM. (L6)/(L9): iteration-2 targets from layer 6/9 of the",
        "iteration-1 model. Paper: the numbers of the paper's Table II (its HuBERT rows",
        "are the published HuBERT-base).",
        "",
        "| Model | " + " | ".join(test_sets) + f" | paper test_clean | paper test_other | experiment | decoding | {CHANCE_HEADER} |",
        "|---|" + "---|" * len(test_sets) + "---|---|---|---|---|",
    ]
    for e in entries:
        cells = [f"{e['results'][d]['Err']:.1f}" if d in e["results"] else "-" for d in test_sets]
        paper = None if e["chars"] or e["variant"] else PAPER.get((e["model"], e["layer"], e["kind"]))
        paper_cells = [f"{v:g}" for v in paper] if paper else ["-", "-"]
        lines.append(
            f"| {row_label(e['model'], e['layer'], e['kind'], e['chars'], e['variant'])} | " + " | ".join(cells + paper_cells)
            + f" | {e['exp']} | {e['decode']} | {chance_cell(e['results'], test_sets)} |"
        )
    if not entries:
        lines.append("| (no scored downstream decoding found) |" + " |" * (len(test_sets) + 5))
    lines += ["", *CHANCE_LEGEND, "", END]
    return "\n".join(lines)


def find_section(text: str) -> Optional[str]:
    """The Table II section of ``text`` (markers included), or None when it has none."""
    begin, end = _BEGIN_RE.search(text), _END_RE.search(text)
    if begin is None or end is None or end.start() < begin.start():
        return None
    return text[begin.start() : end.end()]


def replace_section(text: str, section: str) -> str:
    """``text`` with its Table II section replaced by ``section`` (appended if absent).

    Raises:
        ValueError: The markers are unbalanced (one without the other, or repeated).
    """
    begins, ends = list(_BEGIN_RE.finditer(text)), list(_END_RE.finditer(text))
    if not begins and not ends:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + section + "\n"
    if len(begins) != 1 or len(ends) != 1 or ends[0].start() < begins[0].start():
        raise ValueError(
            f"the Table II markers are broken ({len(begins)} BEGIN, {len(ends)} END lines): fix or delete them"
        )
    return text[: begins[0].start()] + section + text[ends[0].end() :]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_dir", default="exp")
    parser.add_argument("--test_sets", default="test_clean test_other")
    parser.add_argument("--out", default="RESULTS.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        entries = collect(Path(args.exp_dir))
        text = out.read_text(encoding="utf-8") if out.exists() else ""
        new_text = replace_section(text, render(entries, args.test_sets.split()))
    except (OSError, ValueError) as e:
        print(f"make_table2.py: error: {out}: {e}", file=sys.stderr)
        return 1
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    os.replace(tmp, out)
    print(f"{out}: Table II with {len(entries)} decodings", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
