#!/usr/bin/env python3
"""Synthesize a small corpus in the LibriSpeech layout with espeak-ng.

Writes ``<out_dir>/LibriSpeech/<set>/<spk>/<chap>/<spk>-<chap>-<utt>.flac`` (16 kHz,
16 bit, mono) with ``<spk>-<chap>.trans.txt`` beside them, for the sets
train-clean-100, dev-clean, dev-other, test-clean and test-other, plus
``SPEAKERS.TXT`` (the voice of each speaker) and ``<out_dir>/lm_text.txt``, a text
corpus for language models that shares no sentence with the dev and test sets.

A "speaker" is an espeak-ng voice (accent + variant), a speaking rate and a
pitch. The clean sets use the accents and variants of the training speakers
(with new rates and pitches); the "other" sets use unseen accents or variants,
faster speech, and white noise at a random SNR. Sentences come from the template
grammar of ``mini_text.py``; train, dev and test sentences are disjoint.

The same options and seed give the same files, byte for byte, whatever ``--nj``.
The corpus is built in ``<out_dir>.tmp`` and renamed when complete; an
interrupted run resumes there, keeping the utterances already written.

Usage:
    make_mini_corpus.py --out_dir downloads/mini_corpus --seed 1 --nj 2
"""

import argparse
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mini_text  # noqa: E402

SAMPLE_RATE = 16000
SETS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
# espeak-ng accents and variants of the training (and clean evaluation) speakers.
SEEN_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-scotland")
SEEN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
# Only the "other" sets use these.
UNSEEN_ACCENTS = ("en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
UNSEEN_VARIANTS = ("m8", "f5")
FORMAT_VERSION = 1


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="the corpus goes to OUT_DIR/LibriSpeech")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--nj", type=int, default=1, help="parallel synthesis processes")
    parser.add_argument("--train_speakers", type=int, default=40, help="speakers in train-clean-100")
    parser.add_argument("--train_utts_per_speaker", type=int, default=50, help="utterances per training speaker")
    parser.add_argument("--eval_speakers", type=int, default=8, help="speakers in each dev/test set")
    parser.add_argument("--eval_utts_per_speaker", type=int, default=15, help="utterances per dev/test speaker")
    parser.add_argument("--lm_sentences", type=int, default=20000, help="sentences in lm_text.txt")
    parser.add_argument("--clean_rate", type=int, nargs=2, default=(150, 185), help="words per minute, clean speakers")
    # With these defaults the mini "+ Decoder" model scored 35.9% WER on dev-clean, 84.3%
    # on dev-other and 72.4% on test-other (with rate 185-225 and SNR 10-20 dB: 97%).
    parser.add_argument("--other_rate", type=int, nargs=2, default=(170, 200), help="words per minute, other speakers")
    parser.add_argument("--other_snr_db", type=float, nargs=2, default=(20.0, 30.0), help="SNR range of the other sets")
    parser.add_argument("--lexicon", default=str(mini_text.DEFAULT_LEXICON), help="vocabulary file")
    args = parser.parse_args(argv)
    for name in ("nj", "train_speakers", "train_utts_per_speaker", "eval_speakers", "eval_utts_per_speaker"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lm_sentences < 0:
        raise ValueError(f"--lm_sentences must be >= 0, got {args.lm_sentences}")
    for name in ("clean_rate", "other_rate", "other_snr_db"):
        low, high = getattr(args, name)
        if low > high:
            raise ValueError(f"--{name}: the low end {low} is above the high end {high}")
    for name in ("clean_rate", "other_rate"):
        if not 80 <= getattr(args, name)[0] <= getattr(args, name)[1] <= 450:
            raise ValueError(f"--{name} must lie within 80..450 words per minute")
    return args


def check_tools() -> None:
    """Fail early, with the fix, when espeak-ng, sox or a voice variant is missing."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found on PATH (Debian: apt-get install espeak-ng sox)")
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    available = {line.split()[-1].split("/")[-1] for line in listing.splitlines()[1:] if line.split()}
    # espeak-ng falls back silently to the plain voice for an unknown variant.
    missing = [v for v in SEEN_VARIANTS + UNSEEN_VARIANTS if v not in available]
    if missing:
        raise RuntimeError(f"espeak-ng lacks voice variant(s) {missing}; is espeak-ng-data complete?")


def _speakers(rng: random.Random, count: int, combos: List, rate, pitch=(30, 70)) -> List[Dict]:
    """``count`` speakers of the (accent, variant) ``combos`` (shuffled in place) with random rates and pitches."""
    rng.shuffle(combos)
    out = []
    for i in range(count):
        accent, variant = combos[i % len(combos)]
        out.append(
            {
                "accent": accent,
                "variant": variant,
                "rate": rng.randint(*rate),
                "pitch": rng.randint(*pitch),
                "sex": "F" if variant.startswith("f") else "M",
            }
        )
    return out


def _other_combos():
    """Voices never heard in training: an unseen accent or an unseen variant."""
    combos = [(a, v) for a in UNSEEN_ACCENTS for v in SEEN_VARIANTS + UNSEEN_VARIANTS]
    combos += [(a, v) for a in SEEN_ACCENTS for v in UNSEEN_VARIANTS]
    return combos


def plan(args: argparse.Namespace) -> Dict:
    """Decide every speaker, sentence and file (cheap, deterministic, no audio)."""
    rng = random.Random(args.seed)
    lexicon = mini_text.load_lexicon(args.lexicon)
    n_eval = args.eval_speakers * args.eval_utts_per_speaker
    n_train = args.train_speakers * args.train_utts_per_speaker
    sentences = mini_text.unique_sentences(lexicon, 4 * n_eval + n_train + args.lm_sentences, seed=args.seed)
    pools = {
        "dev-clean": sentences[0:n_eval],
        "dev-other": sentences[n_eval : 2 * n_eval],
        "test-clean": sentences[2 * n_eval : 3 * n_eval],
        "test-other": sentences[3 * n_eval : 4 * n_eval],
        "train-clean-100": sentences[4 * n_eval : 4 * n_eval + n_train],
    }
    lm_text = sentences[4 * n_eval + n_train :]

    def seen():
        return list(itertools.product(SEEN_ACCENTS, SEEN_VARIANTS))

    other = _other_combos()  # one list for both "other" sets, reshuffled for each
    speakers = {
        "train-clean-100": _speakers(rng, args.train_speakers, seen(), args.clean_rate),
        "dev-clean": _speakers(rng, args.eval_speakers, seen(), args.clean_rate),
        "test-clean": _speakers(rng, args.eval_speakers, seen(), args.clean_rate),
        "dev-other": _speakers(rng, args.eval_speakers, other, args.other_rate),
        "test-other": _speakers(rng, args.eval_speakers, other, args.other_rate),
    }

    jobs = []
    speaker_table = []
    for set_index, name in enumerate(SETS):
        per_spk = args.train_utts_per_speaker if name == "train-clean-100" else args.eval_utts_per_speaker
        texts = pools[name]
        for s, spk in enumerate(speakers[name]):
            spk_id = (set_index + 1) * 1000 + s + 1
            n_chapters = 2 if per_spk >= 4 else 1
            speaker_table.append((spk_id, spk, name, per_spk))
            for u in range(per_spk):
                chap_id = spk_id * 10 + 1 + (u * n_chapters) // per_spk
                text = texts[s * per_spk + u]
                snr = rng.uniform(*args.other_snr_db) if name.endswith("other") else None
                utt_id = f"{spk_id}-{chap_id}-{u:04d}"
                jobs.append(
                    {
                        "set": name,
                        "rel": f"{name}/{spk_id}/{chap_id}/{utt_id}.flac",
                        "utt_id": utt_id,
                        "text": text,
                        "voice": f"{spk['accent']}+{spk['variant']}",
                        "rate": spk["rate"],
                        "pitch": spk["pitch"],
                        "snr_db": snr,
                        "noise_seed": int(hashlib.sha256(f"{args.seed}:{utt_id}".encode()).hexdigest()[:8], 16),
                    }
                )
    return {"jobs": jobs, "speakers": speaker_table, "lm_text": lm_text}


def synthesize(job: Dict, root: Path) -> str:
    """Write one utterance (atomically) unless it exists; returns its id."""
    path = root / job["rel"]
    if path.exists():
        return job["utt_id"]
    path.parent.mkdir(parents=True, exist_ok=True)
    espeak = [
        "espeak-ng", "-v", job["voice"], "-s", str(job["rate"]), "-p", str(job["pitch"]),
        "--stdout", job["text"].lower(),
    ]
    # -D: no dither, so the conversion is deterministic.
    sox = ["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-e", "signed", "-b", "16", "-c", "1", "-"]
    speech = subprocess.run(espeak, capture_output=True, check=True).stdout
    raw = subprocess.run(sox, input=speech, capture_output=True, check=True).stdout
    audio = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    if audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {job['utt_id']}: {job['text']!r}")
    if job["snr_db"] is not None:
        rng = np.random.default_rng(job["noise_seed"])
        active = audio[np.abs(audio) > 0.02 * np.abs(audio).max()]
        power = float(np.mean(active**2)) if active.size else float(np.mean(audio**2))
        noise = rng.standard_normal(audio.size) * np.sqrt(power / 10.0 ** (job["snr_db"] / 10.0))
        audio = audio + noise
    audio = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
    tmp = path.with_name(path.name + ".tmp")
    soundfile.write(str(tmp), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)
    return job["utt_id"]


def _synthesize_star(item):
    return synthesize(*item)


def write_text_files(corpus: Dict, root: Path, lm_path: Path) -> None:
    chapters: Dict[Path, List[str]] = {}
    for job in corpus["jobs"]:
        rel = Path(job["rel"])
        spk, chap = job["utt_id"].split("-")[:2]
        trans = root / rel.parent / f"{spk}-{chap}.trans.txt"
        chapters.setdefault(trans, []).append(f"{job['utt_id']} {job['text']}")
    for trans, lines in chapters.items():
        trans.write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    with open(root / "SPEAKERS.TXT", "w", encoding="utf-8") as f:
        f.write("; Synthesized speakers: espeak-ng voice, words per minute, pitch\n")
        f.write(";ID  |SEX| SUBSET           | UTTS | VOICE\n")
        for spk_id, spk, name, per_spk in corpus["speakers"]:
            voice = f"{spk['accent']}+{spk['variant']} rate={spk['rate']} pitch={spk['pitch']}"
            f.write(f"{spk_id:<5}| {spk['sex']} | {name:<16} | {per_spk:4d} | {voice}\n")
    lm_path.write_text("".join(s + "\n" for s in corpus["lm_text"]), encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    params = {k: v for k, v in vars(args).items() if k not in ("out_dir", "nj", "lexicon")}
    params["lexicon_sha256"] = hashlib.sha256(Path(args.lexicon).read_bytes()).hexdigest()
    params["format_version"] = FORMAT_VERSION
    params = json.loads(json.dumps(params))  # tuples -> lists, as read back

    done_file = out_dir / "params.json"
    if done_file.exists() and json.loads(done_file.read_text()) == params:
        print(f"{out_dir}: complete for these options; nothing to do", file=sys.stderr)
        return 0
    if out_dir.exists():
        raise RuntimeError(
            f"{out_dir} exists but was made with other options (see {done_file}); remove it or pick another --out_dir"
        )

    check_tools()
    start = time.time()
    corpus = plan(args)
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    tmp_params = tmp_dir / "params.json"
    if tmp_dir.exists() and not (tmp_params.exists() and json.loads(tmp_params.read_text()) == params):
        shutil.rmtree(tmp_dir)  # a partial corpus made with other options
    root = tmp_dir / "LibriSpeech"
    root.mkdir(parents=True, exist_ok=True)
    tmp_params.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")

    items = [(job, root) for job in corpus["jobs"]]
    if args.nj == 1:
        for item in items:
            _synthesize_star(item)
    else:
        with multiprocessing.Pool(args.nj) as pool:
            for _ in pool.imap_unordered(_synthesize_star, items, chunksize=16):
                pass
    write_text_files(corpus, root, tmp_dir / "lm_text.txt")
    os.replace(tmp_dir, out_dir)  # params.json inside marks the corpus complete
    counts = {name: sum(j["set"] == name for j in corpus["jobs"]) for name in SETS}
    print(
        f"{out_dir}: {len(corpus['jobs'])} utterances {counts}, {len(corpus['lm_text'])} LM sentences, "
        f"{time.time() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
