"""Tests of SSAMBA pretraining: espnet_mamba.bin.ssamba_train and local/ssamba.sh."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_mamba.bin import ssamba_train
from espnet_mamba.ssamba import load_ssamba

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "librispeech_100" / "mamba_mi"

TINY_CONFIG = {
    "model": {"embed_dim": 16, "depth": 2, "input_tdim": 64, "d_state": 4,
              "num_classes": 0, "drop_path_rate": 0.1, "backend": "torch"},
    "batch_size": 2,
    "max_steps": 4,
    "lr": 1.0e-3,
    "warmup_steps": 2,
    "mask_patch": 8,
    "log_interval": 1,
    "save_interval": 2,
    "norm_stats_utts": 3,
}


def write_corpus(root: Path, seconds=(0.5, 0.7, 0.4, 0.9, 0.1)) -> Path:
    """Noisy tones as 16 kHz flac files and their wav.scp (the last one too short)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, sec in enumerate(seconds):
        n = int(16000 * sec)
        t = np.arange(n) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(n)
        path = root / f"utt{i}.flac"
        soundfile.write(path, wav.astype(np.float32), 16000)
        lines.append(f"utt{i} {path}\n")
    scp = root / "wav.scp"
    scp.write_text("".join(lines))
    return scp


def write_config(path: Path, **changes) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    for key, value in changes.items():
        if key == "model":
            config["model"].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def run(config: Path, scp: Path, out: Path, *extra: str) -> None:
    args = ssamba_train.get_parser().parse_args(
        ["--config", str(config), "--wav_scp", str(scp), "--output_dir", str(out),
         "--device", "cpu", *extra]
    )
    ssamba_train.run(args)


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_writes_a_loadable_model_and_resumes_exactly(tmp_path):
    scp = write_corpus(tmp_path / "data")
    config = write_config(tmp_path / "conf.yaml")
    run(config, scp, tmp_path / "straight")
    # The same run, interrupted after two steps and resumed.
    run(config, scp, tmp_path / "resumed", "--max_steps", "2")
    run(config, scp, tmp_path / "resumed")
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pth", weights_only=True)
    assert straight["step"] == resumed["step"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

    stored = yaml.safe_load((tmp_path / "straight" / "config.yaml").read_text())
    assert stored["norm_mean"] is not None and stored["norm_std"] > 0
    model = load_ssamba(tmp_path / "straight")
    assert model.config.norm_mean == stored["norm_mean"]
    assert model.config.embed_dim == 16
    wav, _ = soundfile.read(tmp_path / "data" / "utt0.flac", dtype="float32")
    feats = model.extract_layers([torch.from_numpy(wav)])
    assert len(feats.hidden_states) == 2
    log = (tmp_path / "straight" / "train.log").read_text()
    assert "skipping 1 utterances shorter than one patch" in log
    assert "step 4/4" in log

    # A finished run is left alone.
    mtime = (tmp_path / "straight" / "model.pth").stat().st_mtime_ns
    run(config, scp, tmp_path / "straight")
    assert (tmp_path / "straight" / "model.pth").stat().st_mtime_ns == mtime
    assert not list((tmp_path / "straight").rglob("*.tmp"))


def test_resume_refuses_another_architecture(tmp_path):
    scp = write_corpus(tmp_path / "data")
    run(write_config(tmp_path / "a.yaml", max_steps=1), scp, tmp_path / "exp")
    other = write_config(tmp_path / "b.yaml", model={"embed_dim": 24})
    with pytest.raises(ValueError, match="model of the run being resumed"):
        run(other, scp, tmp_path / "exp")


def test_bad_configs_and_inputs_are_named(tmp_path):
    scp = write_corpus(tmp_path / "data")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config keys \['learning_rate'\]"):
        run(write_config(tmp_path / "bad.yaml", learning_rate=1.0), scp, tmp_path / "e1")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        run(write_config(tmp_path / "c.yaml", batch_size=0), scp, tmp_path / "e2")
    with pytest.raises(ValueError, match="depth must be even"):
        run(write_config(tmp_path / "d.yaml", model={"depth": 3}), scp, tmp_path / "e3")
    config = write_config(tmp_path / "ok.yaml")
    piped = tmp_path / "piped.scp"
    piped.write_text("utt0 sox a.wav -t wav - |\n")
    with pytest.raises(ValueError, match=r"piped\.scp:1: piped command"):
        run(config, piped, tmp_path / "e4")
    missing = tmp_path / "missing.scp"
    missing.write_text(f"utt0 {tmp_path / 'nothing.flac'}\n")
    with pytest.raises(ValueError, match="nothing.flac: cannot read audio"):
        run(config, missing, tmp_path / "e5")
    only_short = tmp_path / "short.scp"
    only_short.write_text(scp.read_text().splitlines()[-1] + "\n")
    with pytest.raises(ValueError, match="no utterance is long enough"):
        run(config, only_short, tmp_path / "e6")


@pytest.mark.slow
def test_recipe_script_trains_into_exp(tmp_path):
    recipe = tmp_path / "recipe"
    for name in ("local", "utils", "conf"):
        shutil.copytree(RECIPE / name, recipe / name)
    for name in ("path.sh", "cmd.sh"):
        shutil.copy(RECIPE / name, recipe / name)
    scp = write_corpus(tmp_path / "data")
    dump = recipe / "dump" / "raw" / "train_clean_100"
    dump.mkdir(parents=True)
    shutil.copy(scp, dump / "wav.scp")
    write_config(recipe / "conf" / "ssamba" / "test.yaml", max_steps=2)
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, MAMBA_MI_ROOT=str(REPO), OMP_NUM_THREADS="1", PYTHONPATH=python_path,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = ["bash", "local/ssamba.sh", "--ssamba_config", "conf/ssamba/test.yaml"]
    done = subprocess.run(cmd, cwd=recipe, env=env, capture_output=True, text=True)
    job_log = recipe / "exp" / "ssamba_test" / "log" / "ssamba_train.log"
    assert done.returncode == 0, done.stdout + done.stderr + (
        job_log.read_text() if job_log.is_file() else "")
    assert "Successfully finished" in done.stdout
    model = load_ssamba(recipe / "exp" / "ssamba_test" / "model.pth")
    assert model.config.depth == 2
    # Missing training data: a clear error.
    cmd += ["--train_set", "nothing"]
    failed = subprocess.run(cmd, cwd=recipe, env=env, capture_output=True, text=True)
    assert failed.returncode != 0
    assert "dump/raw/nothing/wav.scp is missing" in failed.stdout + failed.stderr
