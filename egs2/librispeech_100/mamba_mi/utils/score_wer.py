#!/usr/bin/env python3
"""Word error rate of Kaldi-style hypothesis text against reference text (jiwer).

Both sides are normalized the same way before scoring: upper case, punctuation
other than the apostrophe inside a word removed, white space collapsed. An
utterance of the reference without a hypothesis counts as an empty hypothesis
(all deletions); a hypothesis without a reference is an error.

A WER alone does not say whether a model listens: a model that writes the same
few words for every utterance gets 90-100% from deletions, and one that loops gets
over 100% from substitutions and insertions. So the hypotheses are also scored at chance level: each
reference against the hypotheses of other utterances of about its length (random
derangements within blocks of references of similar word count, fixed seed), and a
one-sided sign test over utterances asks whether each reference is matched better
by its own hypothesis. Where it is not (p >= CHANCE_ALPHA), the output carries
nothing of the audio beyond its length, whatever the WER.

Writes OUT_DIR/result.txt (table: Snt Wrd Corr Sub Del Ins Err S.Err, in %
except the counts, and the chance-level line), OUT_DIR/result.json (the same
numbers plus raw counts and the chance-level fields) and OUT_DIR/per_utt.txt
(reference, hypothesis and error counts of each utterance).

Usage:
    score_wer.py REF_TEXT HYP_TEXT OUT_DIR
"""

import argparse
import json
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jiwer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_dir import read_kv  # noqa: E402

__all__ = ["CHANCE_ALPHA", "CHANCE_MIN_UTTS", "CHANCE_SHUFFLES", "chance_level", "format_p", "normalize", "score"]

_PUNCT = re.compile(r"[^\w\s']")
CHANCE_SHUFFLES = 20  # derangements of the hypotheses for the chance level
CHANCE_BLOCK = 8  # utterances of similar reference length that trade hypotheses
CHANCE_ALPHA = 0.01  # sign-test level below which the output is above chance
# the fewest utterances whose sign test can go below CHANCE_ALPHA (0.5 ** n < CHANCE_ALPHA)
CHANCE_MIN_UTTS = math.floor(math.log2(1 / CHANCE_ALPHA)) + 1


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
    chance = chance_level([row["ref"] for row in rows], [row["hyp"] for row in rows], [row["err"] for row in rows])
    return {**totals, **rates, **chance, "per_utt": rows}


def _edits(ref: str, hyp: str) -> int:
    """Word edits (substitutions + deletions + insertions) turning ``ref`` into ``hyp``."""
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions


def _sign_test(wins: int, losses: int) -> float:
    """One-sided sign-test p-value: P(at least ``wins`` of ``wins + losses`` fair coin flips)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def chance_level(refs: List[str], hyps: List[str], errors: List[int]) -> Dict:
    """How the hypotheses score against the references of other utterances of about
    the same length.

    The utterances, sorted by reference word count, are cut into blocks of
    ``CHANCE_BLOCK`` (the last block takes the remainder). In each of ``CHANCE_SHUFFLES``
    rounds, a random cyclic permutation sigma within each block (Sattolo's shuffle,
    seed 0: no utterance keeps its own hypothesis) scores reference i against the
    hypothesis of utterance sigma(i); the chance errors of reference i are the mean
    over the rounds. Trading hypotheses only between references of similar length
    keeps what a hypothesis can know from the audio's duration alone. An utterance is
    a win when its own hypothesis has fewer errors than its chance errors, a loss
    when it has more.

    Args:
        refs: Normalized references, one per utterance.
        hyps: Normalized hypotheses, in the same order.
        errors: Word errors of each hypothesis against its own reference.

    Returns:
        ``chance_Err`` (WER in % at chance level), ``chance_wins``, ``chance_losses``,
        ``chance_p`` (one-sided sign test of wins against losses) and ``above_chance``
        (``chance_p < CHANCE_ALPHA``); all None for fewer than ``CHANCE_MIN_UTTS``
        utterances, where not even all wins would be significant.
    """
    n = len(refs)
    if n < CHANCE_MIN_UTTS:
        return {"chance_Err": None, "chance_wins": None, "chance_losses": None, "chance_p": None,
                "above_chance": None}
    rng = random.Random(0)
    by_length = sorted(range(n), key=lambda i: (len(refs[i].split()), i))
    starts = list(range(0, max(n - CHANCE_BLOCK, 0) + 1, CHANCE_BLOCK))
    blocks = [by_length[lo:hi] for lo, hi in zip(starts, starts[1:] + [n])]
    chance_errors = [0.0] * n
    for _ in range(CHANCE_SHUFFLES):
        for block in blocks:
            partner = list(block)
            for k in range(len(partner) - 1, 0, -1):  # Sattolo: a random cycle, no fixed point
                j = rng.randrange(k)
                partner[k], partner[j] = partner[j], partner[k]
            for i, other in zip(block, partner):
                chance_errors[i] += _edits(refs[i], hyps[other]) / CHANCE_SHUFFLES
    wins = sum(own < chance for own, chance in zip(errors, chance_errors))
    losses = sum(own > chance for own, chance in zip(errors, chance_errors))
    words = sum(len(r.split()) for r in refs)
    p = _sign_test(wins, losses)
    return {"chance_Err": 100.0 * sum(chance_errors) / max(words, 1), "chance_wins": wins,
            "chance_losses": losses, "chance_p": p, "above_chance": p < CHANCE_ALPHA}


def format_p(p: float) -> str:
    """``p = 0.0031`` or, where the p-value underflows a float, ``p < 1e-300``."""
    return f"p = {p:.2g}" if p > 0 else "p < 1e-300"


def _chance_line(result: Dict) -> str:
    """One line of result.txt on the chance level of ``result`` (from :func:`score`)."""
    if result["chance_p"] is None:
        return f"chance: not estimated (fewer than {CHANCE_MIN_UTTS} utterances)\n"
    verdict = ("above chance" if result["above_chance"]
               else "NOT above chance: the hypotheses carry nothing of the audio beyond its length")
    return (
        f"chance: WER {result['chance_Err']:.1f} against the references of other utterances of similar "
        f"length ({CHANCE_SHUFFLES} shuffles); own reference matched better in {result['chance_wins']}, worse in "
        f"{result['chance_losses']} utterances (sign test {format_p(result['chance_p'])}): {verdict}\n"
    )


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
        + _chance_line(result)
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
