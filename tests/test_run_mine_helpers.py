"""Tiny ESPnet models and data in a temporary recipe layout, for the MI analysis tests.

``make_recipe(root)`` writes::

    root/data/dev_clean/wav.scp, root/data/test_clean/wav.scp   (short random audio)
    root/exp/asr_conbimamba_dec/{config.yaml, valid.acc.ave.pth}     CTC + decoder
    root/exp/asr_conbimamba_ctc/{config.yaml, valid.loss.ave.pth}    CTC only
    root/exp/asr_conformer_ctc/{config.yaml, valid.loss.ave.pth}     ESPnet Conformer (hooks)

The configs are ESPnet's own layout: ``vars()`` of the ASR task's parsed arguments,
as ``asr_train`` writes them. This module has no tests of its own.
"""

from pathlib import Path

import numpy as np
import soundfile
import torch
import yaml

TOKENS = ["<blank>", "<unk>", "a", "b", "c", "<sos/eos>"]
SAMPLE_RATE = 16000


def _asr_args(encoder: str, encoder_conf: dict, decoder: bool):
    from espnet_mamba.bin import register

    register()  # conbimamba and our S3PRL upstreams
    from espnet2.tasks.asr import ASRTask

    argv = [
        "--token_list", "unused",
        "--frontend_conf", "n_fft=128", "--frontend_conf", "hop_length=64",
        "--frontend_conf", "win_length=128", "--frontend_conf", "n_mels=20",
        "--normalize", "utterance_mvn",
        "--encoder", encoder,
        "--decoder", "transformer" if decoder else "none",
        "--model_conf", f"ctc_weight={0.3 if decoder else 1.0}",
    ]
    for key, value in encoder_conf.items():
        argv += ["--encoder_conf", f"{key}={value}"]
    if decoder:
        argv += ["--decoder_conf", "attention_heads=2", "--decoder_conf", "linear_units=16",
                 "--decoder_conf", "num_blocks=1"]
    args = ASRTask.get_parser().parse_args(argv)
    args.token_list = list(TOKENS)
    return ASRTask, args


CONBIMAMBA = dict(output_size=16, linear_units=16, num_blocks=3, cnn_module_kernel=5, d_state=4,
                  dropout_rate=0.0, positional_dropout_rate=0.0)
CONFORMER = dict(output_size=16, linear_units=16, num_blocks=3, attention_heads=2, cnn_module_kernel=5,
                 dropout_rate=0.0, positional_dropout_rate=0.0, attention_dropout_rate=0.0)


def _build_and_save(task, args, model_dir, checkpoint: str, seed: int):
    """Build ``task``'s model from ``args`` (seeded), write ``config.yaml`` as ESPnet does and the
    checkpoint; returns the model."""
    torch.manual_seed(seed)
    model = task.build_model(args).eval()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / "config.yaml").open("w", encoding="utf-8") as f:
        yaml.safe_dump(vars(args), f, sort_keys=False)
    torch.save(model.state_dict(), model_dir / checkpoint)
    return model


def make_asr_model(model_dir: Path, encoder="conbimamba", encoder_conf=None, decoder=True,
                   checkpoint="valid.acc.ave.pth", seed=0):
    """Build a tiny ASR model, save ``config.yaml`` and a checkpoint; returns the model."""
    task, args = _asr_args(encoder, encoder_conf or CONBIMAMBA, decoder)
    return _build_and_save(task, args, model_dir, checkpoint, seed)


def write_data(root: Path, sets=("dev_clean", "test_clean"), per_set=4, seed=0):
    """Random-noise utterances (0.3 to 0.9 s) in Kaldi data dirs; returns {utt: path}."""
    rng = np.random.default_rng(seed)
    wavs = {}
    for name in sets:
        data_dir = root / "data" / name
        audio_dir = root / "audio" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        audio_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(per_set):
            utt = f"{name}-{i:03d}"
            samples = int(rng.integers(int(0.3 * SAMPLE_RATE), int(0.9 * SAMPLE_RATE)))
            t = np.arange(samples) / SAMPLE_RATE
            audio = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(samples)
            path = audio_dir / f"{utt}.flac"
            soundfile.write(path, audio.astype(np.float32), SAMPLE_RATE)
            # Relative to the recipe root, as the recipe writes them.
            lines.append(f"{utt} audio/{name}/{utt}.flac")
            wavs[utt] = path
        (data_dir / "wav.scp").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return wavs


def make_recipe(root: Path, conformer=True, per_set=4):
    """A recipe directory with data and three (or two) tiny trained models."""
    root = Path(root)
    write_data(root, per_set=per_set)
    exp = root / "exp"
    make_asr_model(exp / "asr_conbimamba_dec", decoder=True, checkpoint="valid.acc.ave.pth", seed=0)
    make_asr_model(exp / "asr_conbimamba_ctc", decoder=False, checkpoint="valid.loss.ave.pth", seed=1)
    if conformer:
        make_asr_model(exp / "asr_conformer_ctc", encoder="conformer", encoder_conf=CONFORMER,
                       decoder=False, checkpoint="valid.loss.ave.pth", seed=2)
    return exp


def make_ssamba_model(model_dir: Path, seed=0, embed_dim=16):
    """A tiny SSAMBA in the layout of ``espnet_mamba.bin.ssamba_train`` (config.yaml + model.pth)."""
    from espnet_mamba.ssamba import SSAMBA, SSAMBAConfig, save_ssamba

    config = SSAMBAConfig(embed_dim=embed_dim, depth=4, input_tdim=64, d_state=4, num_classes=0,
                          norm_mean=-4.0, norm_std=4.0, backend="torch")
    torch.manual_seed(seed)
    model = SSAMBA(config).eval()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_ssamba(model, model_dir / "model.pth", step=1)
    (model_dir / "config.yaml").write_text(
        yaml.safe_dump({"model": config.to_dict(), "norm_mean": -4.0, "norm_std": 4.0, "max_steps": 1}),
        encoding="utf-8")
    return model


def make_ssl_model(model_dir: Path, encoder="conbimamba", seed=0):
    """A tiny Mamba-HuBERT (or Transformer HuBERT) of ESPnet's SSL task: config.yaml + latest.pth."""
    from espnet_mamba.bin import register

    register()  # conbimamba and our S3PRL upstreams
    from espnet2.tasks.ssl import SSLTask

    args = SSLTask.get_parser().parse_args(["--token_list", "unused", "--frontend", "wav2vec_cnn",
                                            "--preencoder", "linear", "--encoder", encoder])
    args.token_list = [str(i) for i in range(8)]
    args.input_size = None
    args.normalize = None
    args.frontend_conf = {"norm_mode": "group_norm", "conv_mode": "standard", "bias": False,
                          "normalize_audio": False,
                          "shapes": [[8, 10, 5], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 2, 2], [8, 2, 2]]}
    args.preencoder_conf = {"output_size": 16}
    if encoder == "conbimamba":
        args.encoder_conf = dict(output_size=16, linear_units=16, num_blocks=3, input_layer=None, pos_enc="none",
                                 cnn_module_kernel=5, d_state=4, dropout_rate=0.0, positional_dropout_rate=0.0)
    else:
        args.encoder_conf = dict(output_size=16, attention_heads=2, linear_units=16, num_blocks=3,
                                 input_layer=None, dropout_rate=0.0, positional_dropout_rate=0.0,
                                 attention_dropout_rate=0.0)
    args.loss = [{"name": "hubert", "conf": {"num_classes": 8, "final_dim": 8}}]
    args.util = [{"name": "mask", "conf": {"mask_prob": 0.5, "mask_length": 2}}]
    return _build_and_save(SSLTask, args, model_dir, "latest.pth", seed)


def make_upstream_asr_model(model_dir: Path, upstream_ckpt: str, num_blocks=2, input_layer="conv2d2", seed=0):
    """ASR model on an S3PRL upstream (``frontend: s3prl``, ``mamba_mi_hubert_local``) with a
    small Conformer downstream, as stage 12 builds it; ``upstream_ckpt`` is relative to the
    recipe root (the parent of ``exp/``), which must be the working directory when building."""
    encoder_conf = dict(CONFORMER, num_blocks=num_blocks, input_layer=input_layer)
    task, args = _asr_args("conformer", encoder_conf, decoder=False)
    args.frontend = "s3prl"
    args.frontend_conf = {"frontend_conf": {"upstream": "mamba_mi_hubert_local", "path_or_url": upstream_ckpt},
                          "multilayer_feature": True}
    args.normalize = None
    return _build_and_save(task, args, model_dir, "valid.loss.ave.pth", seed)


def make_finetuned_model(model_dir: Path, ssl_ckpt: str, seed=0):
    """CTC fine-tuning model of stage 12 (``encoder: hubert_finetune``, raw waveform input) on
    the SSL checkpoint ``ssl_ckpt`` (relative to the recipe root, the working directory)."""
    task, args = _asr_args("hubert_finetune", {"ssl_model": ssl_ckpt}, decoder=False)
    args.input_size = 1
    args.normalize = None
    return _build_and_save(task, args, model_dir, "valid.loss.ave.pth", seed)


def make_stage12_recipe(root: Path, per_set=2):
    """Data, a Mamba-HuBERT (label layer 9), its CTC fine-tuning and its S3PRL + Conformer model."""
    import os

    root = Path(root)
    write_data(root, per_set=per_set)
    exp = root / "exp"
    make_ssl_model(exp / "ssl_mamba_hubert_it2_L9")
    previous = os.getcwd()
    os.chdir(root)  # configs hold paths relative to the recipe root
    try:
        make_finetuned_model(exp / "ft_mamba_hubert_it2_L9", "exp/ssl_mamba_hubert_it2_L9/latest.pth")
        make_upstream_asr_model(exp / "s3prl_conformer_mamba_hubert_it2_L9", "exp/ssl_mamba_hubert_it2_L9/latest.pth")
    finally:
        os.chdir(previous)
    return exp
