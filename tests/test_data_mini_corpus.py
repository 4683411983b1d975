"""Tests of the synthesized mini corpus: vocabulary, sentence generator, audio."""

import hashlib
import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "librispeech_100" / "mamba_mi"
LOCAL = RECIPE / "local"
HAVE_TTS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
TINY = ["--train_speakers", "3", "--train_utts_per_speaker", "4", "--eval_speakers", "2",
        "--eval_utts_per_speaker", "2", "--lm_sentences", "30"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, LOCAL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(LOCAL))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


mini_text = _load("mini_text")


@pytest.fixture(scope="module")
def lexicon():
    return mini_text.load_lexicon()


def test_vocabulary_has_over_a_thousand_words(lexicon):
    assert len(lexicon.base_words()) >= 1000
    assert len(lexicon.surface_words()) > len(lexicon.base_words())
    assert len(lexicon.nouns) > 300 and len(lexicon.verbs) > 200 and len(lexicon.adjectives) > 150


@pytest.mark.parametrize(
    "fn,word,expected",
    [
        ("plural", "box", "boxes"), ("plural", "city", "cities"), ("plural", "day", "days"),
        ("plural", "dog", "dogs"), ("plural", "church", "churches"),
        ("third_person", "watch", "watches"), ("third_person", "carry", "carries"),
        ("third_person", "go", "goes"), ("third_person", "play", "plays"),
        ("past_tense", "bake", "baked"), ("past_tense", "carry", "carried"),
        ("past_tense", "play", "played"), ("past_tense", "walk", "walked"),
    ],
)
def test_inflection_rules(fn, word, expected):
    assert getattr(mini_text, fn)(word) == expected


def test_irregular_forms_come_from_the_file(lexicon):
    nouns = dict(lexicon.nouns)
    verbs = {v[0]: v for v in lexicon.verbs}
    assert nouns["child"] == "children" and nouns["mouse"] == "mice"
    assert verbs["see"] == ("see", "sees", "saw")
    assert verbs["stop"][2] == "stopped"


def test_sentences_are_deterministic_unique_and_in_vocabulary(lexicon):
    a = mini_text.unique_sentences(lexicon, 500, seed=3)
    b = mini_text.unique_sentences(lexicon, 500, seed=3)
    c = mini_text.unique_sentences(lexicon, 500, seed=4)
    assert a == b and a != c
    assert len(set(a)) == 500
    words = {w for s in a for w in s.split()}
    assert words <= lexicon.surface_words()
    assert all(s == s.upper() and 3 <= len(s.split()) <= 20 for s in a)
    excluded = mini_text.unique_sentences(lexicon, 100, seed=3, exclude=a[:50])
    assert not set(excluded) & set(a[:50])


def test_word_frequencies_follow_rank(lexicon):
    counts = {}
    for s in mini_text.unique_sentences(lexicon, 3000, seed=0):
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    first, last = lexicon.nouns[0][0].upper(), lexicon.nouns[-1][0].upper()
    assert counts.get(first, 0) > 5 * counts.get(last, 0)


def test_lexicon_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "words.txt"
    bad.write_text("[noun]\ncat dog\n[color]\nred\n")
    with pytest.raises(ValueError, match=r"words.txt:3: unknown section \[color\]"):
        mini_text.load_lexicon(bad)
    bad.write_text("[noun]\ncat\n")
    with pytest.raises(ValueError, match="missing or empty section"):
        mini_text.load_lexicon(bad)


def test_generator_rejects_bad_hyperparameters(lexicon):
    with pytest.raises(ValueError, match="zipf_offset"):
        mini_text.SentenceGenerator(lexicon, random.Random(0), zipf_offset=0)
    with pytest.raises(ValueError, match="n must be"):
        mini_text.unique_sentences(lexicon, -1, seed=0)


def test_plan_splits_are_disjoint_and_other_voices_unseen():
    make = _load("make_mini_corpus")
    args = make.parse_args(["--out_dir", "unused", "--train_speakers", "20", "--eval_speakers", "4",
                            "--eval_utts_per_speaker", "5", "--lm_sentences", "200"])
    corpus = make.plan(args)
    texts = {}
    for job in corpus["jobs"]:
        texts.setdefault(job["set"], set()).add(job["text"])
    sets = list(texts)
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
    held_out = set().union(*(texts[s] for s in sets if s != "train-clean-100"))
    assert not set(corpus["lm_text"]) & held_out
    seen = {(j["voice"]) for j in corpus["jobs"] if j["set"] == "train-clean-100"}
    other = [j for j in corpus["jobs"] if j["set"].endswith("other")]
    assert other and all(j["voice"] not in seen and j["snr_db"] is not None for j in other)
    clean_rates = [j["rate"] for j in corpus["jobs"] if j["set"] == "dev-clean"]
    other_rates = [j["rate"] for j in other]
    assert sum(other_rates) / len(other_rates) > sum(clean_rates) / len(clean_rates)
    assert min(other_rates) >= args.other_rate[0] and max(clean_rates) <= args.clean_rate[1]


@pytest.mark.parametrize("option,value", [("--nj", "0"), ("--train_speakers", "0"), ("--lm_sentences", "-1")])
def test_make_corpus_rejects_bad_options(option, value):
    make = _load("make_mini_corpus")
    with pytest.raises(ValueError, match=option):
        make.parse_args(["--out_dir", "x", option, value])


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.skipif(not HAVE_TTS, reason="needs espeak-ng and sox")
def test_corpus_is_bit_identical_for_same_seed_any_nj(tmp_path):
    script = LOCAL / "make_mini_corpus.py"
    for name, nj in (("a", "1"), ("b", "2")):
        out = subprocess.run([sys.executable, str(script), "--out_dir", str(tmp_path / name), "--nj", nj, *TINY],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    out = subprocess.run([sys.executable, str(script), "--out_dir", str(tmp_path / "c"), "--seed", "2", *TINY],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    # a second run with the same options does nothing; other options are refused
    again = subprocess.run([sys.executable, str(script), "--out_dir", str(tmp_path / "a"), *TINY],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    other = subprocess.run([sys.executable, str(script), "--out_dir", str(tmp_path / "a"), "--seed", "5", *TINY],
                           capture_output=True, text=True)
    assert other.returncode == 1 and "other options" in other.stderr


@pytest.mark.skipif(not HAVE_TTS, reason="needs espeak-ng and sox")
def test_corpus_layout_and_audio(tmp_path):
    import soundfile

    out = subprocess.run([sys.executable, str(LOCAL / "make_mini_corpus.py"), "--out_dir", str(tmp_path / "c"), *TINY],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "c" / "LibriSpeech"
    for part in ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"):
        trans = sorted((root / part).glob("*/*/*.trans.txt"))
        assert trans, part
        for t in trans:
            spk, chap = t.name[: -len(".trans.txt")].split("-")
            assert t.parent.name == chap and t.parent.parent.name == spk
            for line in t.read_text().splitlines():
                utt, text = line.split(" ", 1)
                flac = t.parent / f"{utt}.flac"
                info = soundfile.info(str(flac))
                assert info.samplerate == 16000 and info.channels == 1 and info.format == "FLAC"
                assert 0.5 < info.duration < 15 and text == text.upper()
    assert (root / "SPEAKERS.TXT").read_text().count("|") >= 4 * 10
    lm = (tmp_path / "c" / "lm_text.txt").read_text().splitlines()
    assert len(lm) == 30
    params = json.loads((tmp_path / "c" / "params.json").read_text())
    assert params["seed"] == 1
