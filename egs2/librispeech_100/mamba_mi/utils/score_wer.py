#!/usr/bin/env python3
"""Word error rate of Kaldi-style hypothesis text against reference text (jiwer).

Both sides are normalized the same way before scoring: upper case, punctuation
other than the apostrophe inside a word removed, white space collapsed. An
utterance of the reference without a hypothesis counts as an empty hypothesis
(all deletions); a hypothesis without a reference is an error.

Writes OUT_DIR/result.txt (table: Snt Wrd Corr Sub Del Ins Err S.Err, in %
except the counts), OUT_DIR/result.json (the same numbers plus raw counts) and
OUT_DIR/per_utt.txt (reference, hypothesis and error counts of each utterance).

Usage:
    score_wer.py REF_TEXT HYP_TEXT OUT_DIR
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import jiwer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_dir import read_kv  # noqa: E402

__all__ = ["normalize", "score"]

_PUNCT = re.compile(r"[^\w\s']")


def normalize(text: str) -> str:
    """Upper case, no punctuation (a word-internal apostrophe stays), single spaces."""
    text = _PUNCT.sub(" ", text.upper())
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def score(ref: Dict[str, str], hyp: Dict[str, str]) -> Dict:
    """Score hypotheses against references.

    Args:
        ref: utterance -> reference transcript.
        hyp: utterance -> hypothesis (missing utterances count as empty).

    Returns:
        A dict with counts ``snt, wrd, corr, sub, del, ins, snt_err``, the rates
        ``Corr, Sub, Del, Ins, Err, S.Err`` in percent and ``per_utt`` rows.

    Raises:
        ValueError: If a hypothesis has no reference or a reference is empty.
    """
    extra = sorted(set(hyp) - set(ref))
    if extra:
        raise ValueError(f"{len(extra)} hypotheses without a reference, e.g. {extra[0]!r}")
    totals = {"snt": 0, "wrd": 0, "corr": 0, "sub": 0, "del": 0, "ins": 0, "snt_err": 0}
    rows = []
    for utt in sorted(ref):
        r = normalize(ref[utt])
        h = normalize(hyp.get(utt, ""))
        if not r:
            raise ValueError(f"empty reference for {utt!r}")
        out = jiwer.process_words(r, h)
        counts = {"corr": out.hits, "sub": out.substitutions, "del": out.deletions, "ins": out.insertions}
        totals["snt"] += 1
        totals["wrd"] += len(r.split())
        for k, v in counts.items():
            totals[k] += v
        errors = counts["sub"] + counts["del"] + counts["ins"]
        totals["snt_err"] += int(errors > 0)
        rows.append({"utt": utt, "ref": r, "hyp": h, **counts, "err": errors})
    wrd = max(totals["wrd"], 1)
    rates = {
        "Corr": 100.0 * totals["corr"] / wrd,
        "Sub": 100.0 * totals["sub"] / wrd,
        "Del": 100.0 * totals["del"] / wrd,
        "Ins": 100.0 * totals["ins"] / wrd,
        "Err": 100.0 * (totals["sub"] + totals["del"] + totals["ins"]) / wrd,
        "S.Err": 100.0 * totals["snt_err"] / max(totals["snt"], 1),
    }
    return {**totals, **rates, "per_utt": rows}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref")
    parser.add_argument("hyp")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        result = score(read_kv(args.ref, allow_empty_value=True), read_kv(args.hyp, allow_empty_value=True))
    except (ValueError, OSError) as e:
        print(f"score_wer.py: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = (
        f"# reference: {args.ref}\n# hypothesis: {args.hyp}\n"
        "| Snt | Wrd | Corr | Sub | Del | Ins | Err | S.Err |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {result['snt']} | {result['wrd']} | {result['Corr']:.1f} | {result['Sub']:.1f} | {result['Del']:.1f} "
        f"| {result['Ins']:.1f} | {result['Err']:.1f} | {result['S.Err']:.1f} |\n"
        f"%WER {result['Err']:.2f} [ {result['sub'] + result['del'] + result['ins']} / {result['wrd']}, "
        f"{result['ins']} ins, {result['del']} del, {result['sub']} sub ]\n"
    )
    _write(out / "result.txt", table)
    summary = {k: v for k, v in result.items() if k != "per_utt"}
    _write(out / "result.json", json.dumps(summary, indent=1) + "\n")
    lines = []
    for row in result["per_utt"]:
        lines.append(
            f"{row['utt']} ref: {row['ref']}\n{row['utt']} hyp: {row['hyp']}\n"
            f"{row['utt']} #cor {row['corr']} #sub {row['sub']} #del {row['del']} #ins {row['ins']}\n"
        )
    _write(out / "per_utt.txt", "".join(lines))
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
