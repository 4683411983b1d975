"""mamba-mi HuBERT checkpoints as S3PRL upstreams (s3prl_upstream).

The reference test follows S3PRL's way of testing upstreams: hidden states of a
stored checkpoint for a fixed input are compared with stored values. The tiny
checkpoints and references live in tests/data/s3prl_upstream/<encoder>/; to
regenerate them (after an intended change of the models), run

    python tests/test_s3prl_upstream.py --regenerate
"""

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import s3prl_upstream
from espnet_mamba.bin import register
from espnet_mamba.ssl.model import NotOurCheckpointError, load_ssl_model, ssl_features, ssl_hidden_states
from s3prl_upstream.expert import UpstreamExpert

register()  # conbimamba in ESPnet's tasks, our names in s3prl.hub

DATA = Path(__file__).resolve().parent / "data" / "s3prl_upstream"
ENCODERS = ("transformer", "hubert_transformer", "conbimamba")
NAMES = {"transformer": "transformer_hubert_local", "hubert_transformer": "transformer_hubert_local",
         "conbimamba": "mamba_hubert_local"}
D = 16

# The tiny models: HuBERT's CNN kernels/strides at 8 channels, d 16, 2 layers.
_BASE = {
    "frontend": "wav2vec_cnn",
    "frontend_conf": {
        "norm_mode": "group_norm",
        "conv_mode": "standard",
        "bias": False,
        "shapes": [[8, 10, 5], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 3, 2], [8, 2, 2], [8, 2, 2]],
    },
    "input_size": None,
    "normalize": None,
    "specaug": None,
    "preencoder": "linear",
    "preencoder_conf": {"output_size": D},
    "loss": [{"name": "hubert", "conf": {"num_classes": 5, "final_dim": 8}}],
    "util": [{"name": "mask", "conf": {"mask_prob": 0.5, "mask_length": 2}}],
    "model_conf": {"extract_feats_in_collect_stats": False},
    "token_type": "word",
}
_ENCODER = {
    "transformer": {
        "encoder": "transformer",
        "encoder_conf": {
            "output_size": D, "attention_heads": 2, "linear_units": 32, "num_blocks": 2, "dropout_rate": 0.1,
            "input_layer": "wav2vec", "normalize_before": False, "pos_enc_layer_type": "conv",
        },
    },
    "hubert_transformer": {
        "encoder": "hubert_transformer",
        "encoder_conf": {
            "output_size": D, "attention_heads": 2, "linear_units": 32, "num_blocks": 2, "dropout_rate": 0.1,
            "input_layer": "wav2vec", "normalize_before": False, "pos_enc_layer_type": "conv",
        },
    },
    "conbimamba": {
        "encoder": "conbimamba",
        "encoder_conf": {
            "output_size": D, "linear_units": 32, "num_blocks": 2, "dropout_rate": 0.1, "input_layer": None,
            "pos_enc": "none", "cnn_module_kernel": 7, "d_state": 4,
        },
    },
}


def fixed_wavs():
    """Two deterministic waveforms (8000 and 5600 samples): a chirp plus seeded noise."""
    rng = np.random.RandomState(0)
    wavs = []
    for n in (8000, 5600):
        t = np.arange(n) / 16000.0
        wav = 0.3 * np.sin(2 * np.pi * (200 + 800 * t) * t) + 0.05 * rng.randn(n)
        wavs.append(torch.from_numpy(wav.astype(np.float32)))
    return wavs


def make_checkpoint(out_dir: Path, encoder: str, seed: int = 0) -> Path:
    """Write an ESPnet-style tiny SSL checkpoint (config.yaml + model.pth) and return the model file."""
    from espnet2.tasks.ssl import SSLTask

    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(copy.deepcopy(_BASE), **copy.deepcopy(_ENCODER[encoder]))
    config["token_list"] = [str(i) for i in range(5)] + ["<unk>"]
    parser = SSLTask.get_parser()
    args = parser.parse_args([])
    for key, value in config.items():
        setattr(args, key, value)
    torch.manual_seed(seed)
    model = SSLTask.build_model(args)
    full = vars(args)
    full["config"] = None
    with (out_dir / "config.yaml").open("w", encoding="utf-8") as f:
        yaml.safe_dump(full, f)
    torch.save(model.state_dict(), out_dir / "model.pth")
    return out_dir / "model.pth"


def regenerate() -> None:
    for encoder in ENCODERS:
        ckpt = make_checkpoint(DATA / encoder, encoder)
        expert = UpstreamExpert(str(ckpt)).eval()
        with torch.no_grad():
            hs = expert(fixed_wavs())["hidden_states"]
        torch.save([h.clone() for h in hs], DATA / encoder / "reference.pt")
        print(f"{DATA / encoder}: {sum(f.stat().st_size for f in (DATA / encoder).iterdir())} bytes")


def ckpt_of(encoder: str) -> str:
    return str(DATA / encoder / "model.pth")


@pytest.fixture(scope="module", params=ENCODERS)
def encoder(request):
    return request.param


@pytest.fixture(scope="module")
def upstream(encoder):
    from s3prl.nn import S3PRLUpstream

    return S3PRLUpstream(NAMES[encoder], path_or_url=ckpt_of(encoder)).eval()


def test_names_are_registered_local_entries():
    from s3prl.nn import S3PRLUpstream

    names = S3PRLUpstream.available_names()
    for name in s3prl_upstream.UPSTREAM_NAMES:
        assert name in names
        assert name not in S3PRLUpstream.available_names(only_registered_ckpt=True)


def test_unregistered_name_is_a_clear_error():
    from s3prl.nn import S3PRLUpstream

    with pytest.raises(s3prl_upstream.UpstreamNotRegisteredError, match="not registered.*mamba_hubert_local"):
        S3PRLUpstream("mamba_hubert_locl")
    # still an AttributeError, so hasattr() on s3prl.hub keeps working
    import s3prl.hub

    assert not hasattr(s3prl.hub, "no_such_upstream")


def test_shapes_and_downsample_rate(upstream):
    assert upstream.num_layers == 3  # input of layer 1, then 2 layers
    assert upstream.downsample_rates == [320] * 3
    assert upstream.hidden_sizes == [D] * 3


def test_hidden_states_match_stored_reference(encoder, upstream):
    reference = torch.load(DATA / encoder / "reference.pt")
    wavs = fixed_wavs()
    lens = torch.tensor([len(w) for w in wavs])
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    with torch.no_grad():
        hs, hs_lens = upstream(padded, lens)
    assert len(hs) == len(reference)
    # the CNN has (N - 400) // 320 + 1 frames; S3PRL pads to (N - 1) // 320 + 1
    frames = [(len(w) - 400) // 320 + 1 for w in wavs]
    for h, ref in zip(hs, reference):
        for b, n in enumerate(frames):
            torch.testing.assert_close(h[b, :n], ref[b, :n], atol=1e-4, rtol=1e-4)
    assert hs_lens[0].tolist() == [(len(w) - 1) // 320 + 1 for w in wavs]


def test_first_is_encoder_input_and_last_is_encoder_output(encoder):
    """hidden_states[0] is the input of layer 1, hidden_states[-1] what encoder.forward returns."""
    model, _ = load_ssl_model(ckpt_of(encoder))
    wav = fixed_wavs()[0][None]
    lens = torch.tensor([wav.shape[1]])
    with torch.no_grad():
        hs, olens = ssl_hidden_states(model, wav, lens)
        feats, flens = ssl_features(model, wav, lens)
        final, final_lens, _ = model.encoder(feats, flens)
        first = model.encoder.embed(feats)  # input layer (+ positional encoding) of both encoders
    assert len(hs) == 3
    torch.testing.assert_close(hs[0], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs[-1], final, atol=1e-5, rtol=1e-5)
    assert olens.tolist() == final_lens.tolist() == [(wav.shape[1] - 400) // 320 + 1]
    assert not torch.allclose(hs[1], hs[2])


def test_padded_batch_equals_each_utterance_alone(encoder):
    expert = UpstreamExpert(ckpt_of(encoder)).eval()
    wavs = fixed_wavs()
    with torch.no_grad():
        batch = expert(wavs)["hidden_states"]
        alone = expert([wavs[1]])["hidden_states"]
    n = (len(wavs[1]) - 400) // 320 + 1
    for hb, ha in zip(batch, alone):
        assert ha.shape[1] == n
        torch.testing.assert_close(hb[1, :n], ha[0], atol=1e-5, rtol=1e-5)
        assert torch.all(hb[1, n:] == 0)


def test_featurizer_is_a_softmax_weighted_sum(upstream):
    from s3prl.nn import Featurizer

    featurizer = Featurizer(upstream)
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.5, -1.0, 2.0]))
        wav = fixed_wavs()[0][None]
        hs, lens = upstream(wav, torch.tensor([wav.shape[1]]))
        out, out_lens = featurizer(hs, lens)
    w = torch.softmax(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 0)
    expected = sum(wi * h.double() for wi, h in zip(w, hs))
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    assert featurizer.downsample_rate == 320 and out_lens.tolist() == lens[0].tolist()


def test_upstream_stays_in_eval_mode(encoder):
    """A frozen upstream in a training model: no dropout, same output every call."""
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream(NAMES[encoder], path_or_url=ckpt_of(encoder))
    upstream.train()
    assert not upstream.upstream.model.training
    wav = fixed_wavs()[0][None]
    with torch.no_grad():
        a, _ = upstream(wav, torch.tensor([wav.shape[1]]))
        b, _ = upstream(wav, torch.tensor([wav.shape[1]]))
    torch.testing.assert_close(a[-1], b[-1], atol=0, rtol=0)
    fine_tune = S3PRLUpstream(NAMES[encoder], path_or_url=ckpt_of(encoder), extra_conf={"always_eval": False})
    fine_tune.train()
    assert fine_tune.upstream.model.training


def test_auto_name_reads_the_encoder_from_the_config(encoder):
    from s3prl.nn import S3PRLUpstream

    upstream = S3PRLUpstream("mamba_mi_hubert_local", path_or_url=ckpt_of(encoder))
    assert upstream.upstream.config["encoder"] == encoder


def _copy_config(tmp_path, encoder="transformer"):
    (tmp_path / "config.yaml").write_text((DATA / encoder / "config.yaml").read_text())


def test_checkpoint_of_the_other_encoder_is_refused():
    with pytest.raises(NotOurCheckpointError, match="encoder 'transformer', not 'conbimamba'"):
        s3prl_upstream.hubconf.mamba_hubert_local(ckpt_of("transformer"))
    with pytest.raises(NotOurCheckpointError, match="encoder 'conbimamba', not 'hubert_transformer or transformer'"):
        s3prl_upstream.hubconf.transformer_hubert_local(ckpt_of("conbimamba"))


def test_foreign_weights_are_refused(tmp_path):
    _copy_config(tmp_path)
    bad = tmp_path / "model.pth"
    torch.save({"encoder.layer.weight": torch.zeros(3)}, bad)
    with pytest.raises(NotOurCheckpointError, match=r"model\.pth: weights do not match"):
        UpstreamExpert(str(bad))
    state = torch.load(ckpt_of("transformer"))
    state["preencoder.linear_out.weight"] = torch.zeros(D + 1, 8)
    torch.save(state, bad)
    with pytest.raises(NotOurCheckpointError, match="tensor shapes differ"):
        UpstreamExpert(str(bad))


def test_non_state_dict_files_are_refused(tmp_path):
    _copy_config(tmp_path)
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(NotOurCheckpointError, match=r"model\.pth: not a model state dict"):
        UpstreamExpert(str(bad))
    torch.save({"model": {"x": 1}, "reporter": "y"}, bad)  # like a trainer checkpoint
    with pytest.raises(NotOurCheckpointError, match=r"model\.pth: not a model state dict"):
        UpstreamExpert(str(bad))


def test_foreign_configs_are_refused(tmp_path):
    torch.save(torch.load(ckpt_of("transformer")), tmp_path / "model.pth")
    asr_config = {"encoder": "conformer", "encoder_conf": {}, "frontend": "default", "token_list": ["a"],
                  "decoder": "transformer"}
    cases = [
        (asr_config, "not an ESPnet SSL-task"),
        (dict(asr_config, loss=[{"name": "hubert"}]), "encoder 'conformer' is not supported"),
        (dict(asr_config, loss=[{"name": "hubert"}], encoder="transformer"), "frontend 'default' is not supported"),
        (dict(asr_config, loss=[{"name": "data2vec"}], encoder="transformer"), "no entry named 'hubert'"),
        (["a", "list"], "a YAML mapping expected"),
    ]
    for config, message in cases:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(NotOurCheckpointError, match=message):
            UpstreamExpert(str(tmp_path / "model.pth"))


def test_missing_files_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml: no such config file"):
        UpstreamExpert(str(tmp_path / "model.pth"))
    _copy_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.pth: no such model file"):
        UpstreamExpert(str(tmp_path / "model.pth"))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        s3prl_upstream.hubconf.mamba_hubert_local(None)
    with pytest.raises(ValueError, match="local files only"):
        s3prl_upstream.hubconf.mamba_mi_hubert_local("https://example.org/model.pth")


def test_espnet_s3prl_frontend_trains_one_step(tmp_path, encoder):
    """ESPnet's ASR model with `frontend: s3prl` and our upstream: one optimizer step."""
    from espnet2.tasks.asr import ASRTask

    tokens = ["<blank>", "<unk>", "A", "B", "C", "<sos/eos>"]
    config = {
        "frontend": "s3prl",
        "frontend_conf": {"frontend_conf": {"upstream": NAMES[encoder], "path_or_url": ckpt_of(encoder)},
                          "download_dir": None, "multilayer_feature": True},
        "normalize": "utterance_mvn",
        "preencoder": "linear", "preencoder_conf": {"input_size": D, "output_size": D},
        "encoder": "transformer",
        "encoder_conf": {"output_size": D, "attention_heads": 2, "linear_units": 32, "num_blocks": 1,
                         "input_layer": "conv2d2"},
        "decoder": "transformer", "decoder_conf": {"attention_heads": 2, "linear_units": 32, "num_blocks": 1},
        "model_conf": {"ctc_weight": 0.3},
        "token_list": tokens,
    }
    (tmp_path / "asr.yaml").write_text(yaml.safe_dump(config))
    args = ASRTask.get_parser().parse_args(["--config", str(tmp_path / "asr.yaml")])
    torch.manual_seed(0)
    model = ASRTask.build_model(args)
    for name, p in model.named_parameters():  # what freeze_param: [frontend.upstream] does
        if name.startswith("frontend.upstream."):
            p.requires_grad_(False)
    model.train()
    upstream_before = {k: v.clone() for k, v in model.frontend.upstream.state_dict().items()}
    weights_before = model.frontend.featurizer.weights.detach().clone()
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    wavs = fixed_wavs()
    speech = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    loss, stats, _ = model(
        speech, torch.tensor([len(w) for w in wavs]), torch.tensor([[2, 3, 4], [3, 2, -1]]), torch.tensor([3, 2])
    )
    assert torch.isfinite(loss)
    loss.backward()
    optim.step()
    assert not torch.allclose(model.frontend.featurizer.weights, weights_before)
    for k, v in model.frontend.upstream.state_dict().items():
        torch.testing.assert_close(v, upstream_before[k], atol=0, rtol=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Regenerate the stored tiny checkpoints and references")
    parser.add_argument("--regenerate", action="store_true")
    if parser.parse_args().regenerate:
        regenerate()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
