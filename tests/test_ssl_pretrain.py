"""Pretraining a tiny (Mamba-)HuBERT for a few steps through `python -m espnet_mamba.bin.ssl_train`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_mamba.ssl import kmeans

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "s3prl_upstream"
_TRAINING = {
    "batch_type": "numel",
    "batch_bins": 200000,
    "num_iters_per_epoch": 2,
    "max_epoch": 1,
    "num_workers": 0,
    "num_att_plot": 0,
    "optim": "adam",
    "optim_conf": {"lr": 0.001},
    "best_model_criterion": [["valid", "loss", "min"]],
    "keep_nbest_models": 1,
    "collate_fn_conf": {"label_downsampling": 1, "pad": False, "rand_crop": True},
}


def write_data(root: Path, name: str, lengths):
    rng = np.random.RandomState(len(lengths))
    (root / name).mkdir(parents=True)
    lines = []
    for i, n in enumerate(lengths):
        path = root / name / f"{i}.flac"
        soundfile.write(path, (0.1 * rng.randn(n)).astype(np.float32), 16000)
        lines.append(f"{name}-{i} {path}\n")
    (root / name / "wav.scp").write_text("".join(lines))
    return root / name


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["transformer", "conbimamba"])
def test_pretraining_steps_through_the_entry_point(tmp_path, encoder):
    train = write_data(tmp_path, "train", [8000, 9000, 7000, 8500])
    valid = write_data(tmp_path, "valid", [6000, 7000])
    labels = tmp_path / "labels"
    kmeans.main(["--feature", "mfcc", "--n_clusters", "5", "--fit_data_dir", str(train), "--data_dirs",
                 str(train), str(valid), "--out_dir", str(labels), "--n_init", "1"])
    # the architecture of the stored tiny checkpoint, with training options
    stored = yaml.safe_load((DATA / encoder / "config.yaml").read_text())
    keys = ("frontend", "frontend_conf", "input_size", "normalize", "specaug", "preencoder", "preencoder_conf",
            "encoder", "encoder_conf", "loss", "util", "model_conf", "token_type")
    config = {k: stored[k] for k in keys}
    config.update(_TRAINING)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    cmd = [
        sys.executable, "-m", "espnet_mamba.bin.ssl_train", "--config", "train.yaml", "--ngpu", "0",
        "--token_list", str(labels / "tokens.txt"),
        "--train_data_path_and_name_and_type", f"{train}/wav.scp,speech,sound",
        "--train_data_path_and_name_and_type", f"{labels}/train/text,text,text",
        "--valid_data_path_and_name_and_type", f"{valid}/wav.scp,speech,sound",
        "--valid_data_path_and_name_and_type", f"{labels}/valid/text,text,text",
        "--train_shape_file", f"{labels}/train/speech_shape", "--valid_shape_file", f"{labels}/valid/speech_shape",
        "--output_dir", str(out),
    ]
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hubert_loss_m" in result.stderr
    assert (out / "latest.pth").exists()

    from s3prl.nn import S3PRLUpstream

    import s3prl_upstream

    s3prl_upstream.register()
    upstream = S3PRLUpstream("mamba_mi_hubert_local", path_or_url=str(out / "latest.pth")).eval()
    with torch.no_grad():
        hs, lens = upstream(torch.randn(1, 8000), torch.tensor([8000]))
    assert len(hs) == 3 and all(torch.isfinite(h).all() for h in hs)
    trained = torch.load(out / "latest.pth")
    initial = torch.load(DATA / encoder / "model.pth")
    assert trained.keys() == initial.keys()
