"""Bad input stops the recipe before training, naming the file and the problem.

Covers utils/validate_data_dir.py, utils/dump_audio.py, local/prepare_librispeech.py
and local/data.sh on a LibriSpeech-layout tree (synthesized, tiny).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "librispeech_100" / "mamba_mi"
UTILS = RECIPE / "utils"
HAVE_TTS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
SETS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")


def _tone(path: Path, seconds: float = 0.5, rate: int = 16000, fmt: str = "FLAC"):
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=fmt,
                    subtype="PCM_16")


def _data_dir(tmp_path: Path, n: int = 3) -> Path:
    d = tmp_path / "data"
    (tmp_path / "audio").mkdir()
    d.mkdir()
    wav, text, utt2spk = [], [], []
    for i in range(n):
        utt = f"spk1-ch1-{i:04d}"
        path = tmp_path / "audio" / f"{utt}.flac"
        _tone(path)
        wav.append(f"{utt} {path}\n")
        text.append(f"{utt} HELLO WORLD {i}\n")
        utt2spk.append(f"{utt} spk1-ch1\n")
    (d / "wav.scp").write_text("".join(wav))
    (d / "text").write_text("".join(text))
    (d / "utt2spk").write_text("".join(utt2spk))
    (d / "spk2utt").write_text("spk1-ch1 " + " ".join(f"spk1-ch1-{i:04d}" for i in range(n)) + "\n")
    return d


def _validate(d: Path, *extra):
    return subprocess.run([sys.executable, str(UTILS / "validate_data_dir.py"), *extra, str(d)],
                          capture_output=True, text=True)


def test_valid_directory_passes(tmp_path):
    out = _validate(_data_dir(tmp_path), "--decode")
    assert out.returncode == 0, out.stderr
    assert "OK (3 utterances)" in out.stderr


def test_missing_audio(tmp_path):
    d = _data_dir(tmp_path)
    os.remove(tmp_path / "audio" / "spk1-ch1-0001.flac")
    out = _validate(d)
    assert out.returncode == 1
    assert "wav.scp: spk1-ch1-0001: missing audio file" in out.stderr


def test_corrupt_flac_header(tmp_path):
    d = _data_dir(tmp_path)
    (tmp_path / "audio" / "spk1-ch1-0002.flac").write_bytes(b"not a flac file at all" * 10)
    out = _validate(d)
    assert out.returncode == 1
    assert "spk1-ch1-0002: unreadable or corrupt audio" in out.stderr


def test_corrupt_flac_data_needs_decode(tmp_path):
    d = _data_dir(tmp_path)
    path = tmp_path / "audio" / "spk1-ch1-0000.flac"
    data = bytearray(path.read_bytes())
    # keep the header, scramble the frames
    for i in range(200, len(data)):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    out = _validate(d, "--decode")
    assert out.returncode == 1
    assert "spk1-ch1-0000: unreadable or corrupt audio" in out.stderr


def test_wrong_sample_rate(tmp_path):
    d = _data_dir(tmp_path)
    _tone(tmp_path / "audio" / "spk1-ch1-0001.flac", rate=8000)
    out = _validate(d)
    assert out.returncode == 1
    assert "spk1-ch1-0001: sample rate 8000 Hz, expected 16000 Hz" in out.stderr


def test_empty_transcript(tmp_path):
    d = _data_dir(tmp_path)
    (d / "text").write_text("spk1-ch1-0000 HELLO\nspk1-ch1-0001\nspk1-ch1-0002 WORLD\n")
    out = _validate(d)
    assert out.returncode == 1
    assert "text: spk1-ch1-0001: empty transcript" in out.stderr


def test_utterance_in_text_but_not_in_wav_scp(tmp_path):
    d = _data_dir(tmp_path)
    with open(d / "text", "a") as f:
        f.write("spk1-ch1-0009 EXTRA LINE\n")
    out = _validate(d)
    assert out.returncode == 1
    assert "spk1-ch1-0009: in text but not in wav.scp" in out.stderr


def test_unsorted_file(tmp_path):
    d = _data_dir(tmp_path)
    lines = (d / "wav.scp").read_text().splitlines(keepends=True)
    (d / "wav.scp").write_text("".join(reversed(lines)))
    out = _validate(d, "--no_audio")
    assert out.returncode == 1
    assert "wav.scp: not sorted" in out.stderr


def test_spk2utt_disagreeing_with_utt2spk(tmp_path):
    d = _data_dir(tmp_path)
    (d / "spk2utt").write_text("spk1-ch1 spk1-ch1-0000\n")
    out = _validate(d, "--no_audio")
    assert out.returncode == 1
    assert "spk2utt: does not agree with utt2spk" in out.stderr


def test_missing_file(tmp_path):
    d = _data_dir(tmp_path)
    os.remove(d / "utt2spk")
    out = _validate(d)
    assert out.returncode == 1 and "utt2spk: missing" in out.stderr


def test_dump_audio_rejects_corrupt_and_other_rate(tmp_path):
    d = _data_dir(tmp_path)
    _tone(tmp_path / "audio" / "spk1-ch1-0001.flac", rate=22050)
    (tmp_path / "audio" / "spk1-ch1-0002.flac").write_bytes(b"garbage" * 50)
    out = subprocess.run([sys.executable, str(UTILS / "dump_audio.py"), str(d / "wav.scp"), str(tmp_path / "dump"),
                          str(tmp_path / "out.scp"), str(tmp_path / "num")], capture_output=True, text=True)
    assert out.returncode == 1
    assert "spk1-ch1-0001: sample rate 22050 Hz, expected 16000 Hz" in out.stderr
    assert "spk1-ch1-0002: unreadable or corrupt audio" in out.stderr
    assert not (tmp_path / "out.scp").exists()


def test_dump_audio_copies_flac_and_encodes_commands(tmp_path):
    d = _data_dir(tmp_path, n=2)
    wav_path = tmp_path / "audio" / "x.wav"
    _tone(wav_path, seconds=0.25, fmt="WAV")
    with open(d / "wav.scp", "a") as f:
        f.write(f"spk1-ch1-0005 cat {wav_path} |\n")
    out = subprocess.run([sys.executable, str(UTILS / "dump_audio.py"), str(d / "wav.scp"), str(tmp_path / "dump"),
                          str(tmp_path / "out.scp"), str(tmp_path / "num")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    nums = dict(line.split() for line in (tmp_path / "num").read_text().splitlines())
    assert nums == {"spk1-ch1-0000": "8000", "spk1-ch1-0001": "8000", "spk1-ch1-0005": "4000"}
    original = (tmp_path / "audio" / "spk1-ch1-0000.flac").read_bytes()
    assert (tmp_path / "dump" / "spk1-ch1-0000.flac").read_bytes() == original
    assert soundfile.info(str(tmp_path / "dump" / "spk1-ch1-0005.flac")).format == "FLAC"


# --------------------------------------------------------------------------
# LibriSpeech directory -> data directories


def _fake_librispeech(root: Path) -> Path:
    """A tiny LibriSpeech-layout tree from the mini corpus synthesizer."""
    out = subprocess.run(
        [sys.executable, str(RECIPE / "local" / "make_mini_corpus.py"), "--out_dir", str(root),
         "--train_speakers", "2", "--train_utts_per_speaker", "3", "--eval_speakers", "1",
         "--eval_utts_per_speaker", "2", "--lm_sentences", "5"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    return root / "LibriSpeech"


def _copy_recipe(dst: Path) -> Path:
    recipe = dst / "recipe"
    recipe.mkdir()
    for name in ("local", "utils", "conf"):
        shutil.copytree(RECIPE / name, recipe / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("path.sh", "cmd.sh", "run.sh", "mamba_mi.sh"):
        shutil.copy2(RECIPE / name, recipe / name)
    return recipe


def _env():
    env = dict(os.environ)
    env["MAMBA_MI_ROOT"] = str(RECIPE.parents[2])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.skipif(not HAVE_TTS, reason="needs espeak-ng and sox")
def test_data_sh_with_existing_librispeech_dir(tmp_path):
    ls = _fake_librispeech(tmp_path / "corpus")
    recipe = _copy_recipe(tmp_path)
    out = subprocess.run(
        ["bash", "-c", f". ./path.sh && local/data.sh --corpus librispeech --librispeech_dir {ls} --nj 2"],
        cwd=recipe, capture_output=True, text=True, env=_env(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name, count in (("train_clean_100", 6), ("dev_clean", 2), ("dev_other", 2), ("test_clean", 2),
                        ("test_other", 2), ("dev", 4)):
        d = recipe / "data" / name
        assert len((d / "wav.scp").read_text().splitlines()) == count, name
        assert (d / "spk2utt").exists()
    first = (recipe / "data" / "dev_clean" / "wav.scp").read_text().split()[1]
    assert first.endswith(".flac") and Path(first).is_absolute()
    utt2spk = (recipe / "data" / "dev_clean" / "utt2spk").read_text().split()
    assert utt2spk[1] == "-".join(utt2spk[0].split("-")[:2])  # speaker = <speaker>-<chapter>


@pytest.mark.skipif(not HAVE_TTS, reason="needs espeak-ng and sox")
def test_data_sh_reports_missing_set_and_bad_audio(tmp_path):
    ls = _fake_librispeech(tmp_path / "corpus")
    recipe = _copy_recipe(tmp_path)
    shutil.rmtree(ls / "dev-other")
    cmd = f". ./path.sh && local/data.sh --corpus librispeech --librispeech_dir {ls}"
    out = subprocess.run(["bash", "-c", cmd], cwd=recipe, capture_output=True, text=True, env=_env())
    assert out.returncode != 0
    assert "lacks the set(s): dev-other" in out.stdout + out.stderr

    shutil.copytree(ls / "dev-clean", ls / "dev-other")
    flac = sorted((ls / "test-clean").rglob("*.flac"))[0]
    flac.write_bytes(b"broken")
    out = subprocess.run(["bash", "-c", cmd], cwd=recipe, capture_output=True, text=True, env=_env())
    assert out.returncode != 0
    assert f"{flac.stem}: unreadable or corrupt audio" in out.stderr
    assert "invalid data directories: data/test_clean" in out.stderr


def test_prepare_librispeech_missing_set(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    out = subprocess.run([sys.executable, str(RECIPE / "local" / "prepare_librispeech.py"),
                          str(tmp_path / "LibriSpeech"), "dev-clean", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "the LibriSpeech set dev-clean is missing" in out.stderr
