"""Tests of SSAMBA: public checkpoint layout and loading, the Vim layers, features, pretraining."""

import math

import pytest
import torch
import torch.nn.functional as F

from espnet_mamba.nn.mamba import Mamba
from espnet_mamba.nn.selective_scan import cuda_scan_available, selective_scan_reference
from espnet_mamba.ssamba import (
    SSAMBA,
    BiMambaV2,
    SSAMBAConfig,
    cluster_mask,
    compute_fbank,
    fbank_batch,
    infer_config,
    load_ssamba,
    pretrain_loss,
    save_ssamba,
    ssamba_config,
)

MEAN, STD = -4.0, 4.0


def public_layout(embed_dim, depth=24, norm="layer", num_classes=1000, input_fdim=128,
                  input_tdim=1024, fshape=16, tshape=16, d_state=16, d_conv=4, expand=2):
    """Keys and shapes of the public SSAMBA pretraining model (AMBAModel wrapping Vim's
    VisionMamba with bimamba_type="v2"), without DataParallel's "module." prefix."""
    d, e = embed_dim, expand * embed_dim
    rank = math.ceil(d / 16)
    patches = (input_fdim // fshape) * (input_tdim // tshape)
    layout = {
        "p_input_fdim": (),
        "p_input_tdim": (),
        "mask_embed": (1, 1, d),
        "cpredlayer.0.weight": (d, d), "cpredlayer.0.bias": (d,),
        "cpredlayer.2.weight": (fshape * tshape, d), "cpredlayer.2.bias": (fshape * tshape,),
        "gpredlayer.0.weight": (d, d), "gpredlayer.0.bias": (d,),
        "gpredlayer.2.weight": (fshape * tshape, d), "gpredlayer.2.bias": (fshape * tshape,),
        "v.patch_embed.proj.weight": (d, 1, fshape, tshape),
        "v.patch_embed.proj.bias": (d,),
        "v.cls_token": (1, 1, d),
        "v.pos_embed": (1, patches + 1, d),
        "v.norm_f.weight": (d,),
    }
    if norm == "layer":
        layout["v.norm_f.bias"] = (d,)
    if num_classes:
        layout["v.head.weight"] = (num_classes, d)
        layout["v.head.bias"] = (num_classes,)
    for i in range(depth):
        p = f"v.layers.{i}."
        layout[p + "norm.weight"] = (d,)
        if norm == "layer":
            layout[p + "norm.bias"] = (d,)
        m = p + "mixer."
        layout.update({
            m + "in_proj.weight": (2 * e, d),
            m + "out_proj.weight": (d, e),
        })
        for suffix in ("", "_b"):
            layout.update({
                m + f"conv1d{suffix}.weight": (e, 1, d_conv),
                m + f"conv1d{suffix}.bias": (e,),
                m + f"x_proj{suffix}.weight": (rank + 2 * d_state, e),
                m + f"dt_proj{suffix}.weight": (e, rank),
                m + f"dt_proj{suffix}.bias": (e,),
                m + f"A{suffix}_log": (e, d_state),
                m + f"D{suffix}": (e,),
            })
    return layout


def public_state_dict(layout, input_fdim=128, input_tdim=1024, seed=0):
    """A random state dict with the public keys, as the public files store it."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in layout.items():
        sd["module." + key] = torch.randn(shape, generator=gen) * 0.02
    sd["module.p_input_fdim"] = torch.tensor(input_fdim)
    sd["module.p_input_tdim"] = torch.tensor(input_tdim)
    return sd


def small_config(**overrides):
    values = dict(embed_dim=32, depth=4, input_tdim=64, d_state=8, num_classes=0,
                  drop_path_rate=0.0, norm_mean=MEAN, norm_std=STD, backend="torch")
    values.update(overrides)
    return SSAMBAConfig(**values)


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return SSAMBA(small_config(**overrides)).eval()


def waveform(seconds, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = int(16000 * seconds)
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(n, generator=gen)


# ------------------------------------------------------------------- layout
@pytest.mark.parametrize("size,norm", [("tiny", "layer"), ("small", "rms")])
def test_state_dict_matches_public_layout(size, norm):
    model = SSAMBA(ssamba_config(size, norm=norm))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = public_layout({"tiny": 192, "small": 384}[size], norm=norm)
    assert sorted(shapes) == sorted(expected)
    assert shapes == expected
    assert model.p_input_tdim.item() == 1024 and model.p_input_tdim.dtype == torch.int64


def test_load_public_checkpoint_strict(tmp_path):
    layout = public_layout(192)
    sd = public_state_dict(layout)
    path = tmp_path / "ssamba_tiny_400.pth"
    torch.save(sd, path)
    config = infer_config(sd)
    assert (config.embed_dim, config.depth, config.norm) == (192, 24, "layer")
    assert (config.num_classes, config.input_fdim, config.input_tdim) == (1000, 128, 1024)
    assert (config.fshape, config.tshape, config.paired_layers) == (16, 16, True)
    model = load_ssamba(path, size="tiny", norm_mean=MEAN, norm_std=STD)
    assert not model.training
    loaded = model.state_dict()
    for key in ("v.layers.23.mixer.A_b_log", "v.pos_embed", "cpredlayer.2.weight"):
        assert torch.equal(loaded[key], sd["module." + key])
    assert model.config.norm_mean == MEAN


def test_load_rejects_wrong_size_and_foreign_models(tmp_path):
    sd = public_state_dict(public_layout(192, depth=2))
    path = tmp_path / "tiny.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"SSAMBA-base.*embed_dim 768.*tiny with embed_dim 192"):
        load_ssamba(path, size="base")
    ssast = {"module.v.blocks.0.attn.qkv.weight": torch.zeros(3, 1),
             "module.v.pos_embed": torch.zeros(1, 3, 1)}
    torch.save(ssast, tmp_path / "ssast.pth")
    with pytest.raises(ValueError, match=r"not an SSAMBA.*SSAST"):
        load_ssamba(tmp_path / "ssast.pth")


def test_load_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    sd = public_state_dict(public_layout(192, depth=2))
    del sd["module.v.layers.1.mixer.D_b"]
    sd["module.v.layers.0.mixer.extra"] = torch.zeros(1)
    sd["module.cpredlayer.2.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        load_ssamba(tmp_path / "bad.pth")
    message = str(info.value)
    assert "missing keys: v.layers.1.mixer.D_b" in message
    assert "unexpected keys: v.layers.0.mixer.extra" in message
    assert "cpredlayer.2.bias: checkpoint (7,) vs model (256,)" in message
    # Non-strict loading skips missing/unexpected keys but never wrong shapes.
    sd["module.cpredlayer.2.bias"] = torch.zeros(256)
    torch.save(sd, tmp_path / "loose.pth")
    model = load_ssamba(tmp_path / "loose.pth", strict=False)
    assert torch.equal(model.v.layers[0].mixer.D, sd["module.v.layers.0.mixer.D"])


def test_pos_embed_inconsistent_with_input_size(tmp_path):
    sd = public_state_dict(public_layout(192, depth=2), input_tdim=512)
    with pytest.raises(ValueError, match="pos_embed has 513 positions"):
        infer_config(sd)


def test_own_checkpoint_round_trip(tmp_path):
    model = small_model()
    save_ssamba(model, tmp_path / "model.pth", step=3)
    loaded = load_ssamba(tmp_path)  # a directory means <dir>/model.pth
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# ------------------------------------------------------------------- layers
def _mamba_with(mixer, suffix):
    """A one-direction Mamba holding the mixer's shared projections and one scan's weights."""
    ref = Mamba(mixer.d_model, d_state=mixer.d_state, d_conv=mixer.d_conv,
                expand=mixer.expand, backend="torch").double()
    with torch.no_grad():
        ref.in_proj.weight.copy_(mixer.in_proj.weight)
        ref.out_proj.weight.copy_(mixer.out_proj.weight)
        for name in ("conv1d", "x_proj", "dt_proj"):
            src, dst = getattr(mixer, name + suffix), getattr(ref, name)
            dst.load_state_dict(src.state_dict())
        ref.A_log.copy_(getattr(mixer, "A_b_log" if suffix else "A_log"))
        ref.D.copy_(getattr(mixer, "D" + suffix))
    return ref


@pytest.mark.parametrize("divide_out", [True, False])
def test_bimamba_v2_equals_two_directional_mambas(divide_out):
    torch.manual_seed(0)
    mixer = BiMambaV2(12, divide_out=divide_out, d_state=4, backend="torch").double()
    with torch.no_grad():  # make the two directions clearly different
        mixer.x_proj_b.weight.mul_(3.0)
        mixer.D_b.fill_(0.3)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    fwd, bwd = _mamba_with(mixer, ""), _mamba_with(mixer, "_b")
    # out_proj is linear without bias: out_proj(a + b) = out_proj(a) + out_proj(b).
    expected = fwd(x) + bwd(x.flip(1)).flip(1)
    if divide_out:
        expected = expected / 2
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-10)


def test_bimamba_v2_backward_scan_matches_sequential_reference():
    torch.manual_seed(1)
    mixer = BiMambaV2(8, d_state=4, backend="torch").double()
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    _, y_bwd = mixer.forward_directions(x)
    xz = mixer.in_proj(x).transpose(1, 2).flip(-1)
    u, z = xz.chunk(2, dim=1)
    u = F.silu(mixer.conv1d_b(u)[..., :7])
    dt, B, C = torch.split(mixer.x_proj_b(u.transpose(1, 2)), [mixer.dt_rank, 4, 4], dim=-1)
    ref = selective_scan_reference(
        u, (dt @ mixer.dt_proj_b.weight.T).transpose(1, 2), -torch.exp(mixer.A_b_log),
        B.transpose(1, 2), C.transpose(1, 2), D=mixer.D_b, z=z,
        delta_bias=mixer.dt_proj_b.bias, delta_softplus=True,
    ).flip(-1)
    torch.testing.assert_close(y_bwd, ref, rtol=1e-9, atol=1e-10)


def test_paired_layers_follow_the_public_forward():
    """Depth 2: one pair; forward layer on x, backward layer on x reversed (cls included)."""
    model = small_model(depth=2).double()
    feats = torch.randn(1, 64, 128, dtype=torch.float64)
    tokens = model.embed(feats)
    l0, l1 = model.v.layers
    hidden = l0.mixer(l0.norm(tokens)) + l1.mixer(l1.norm(tokens.flip(1))).flip(1)
    residual = 2 * tokens  # both layers start their residual stream at the input
    final, outs = model.run_layers(tokens, collect=True)
    torch.testing.assert_close(outs[0], residual + hidden)
    torch.testing.assert_close(final, model.v.norm_f(residual + hidden))
    _, mixer_outs = model.run_layers(tokens, collect=True, output="mixer")
    torch.testing.assert_close(mixer_outs[0], hidden)


# ----------------------------------------------------------------- features
def test_fbank_is_ssast_kaldi_fbank():
    from torchaudio.compliance import kaldi

    wav = waveform(0.5) + 0.2  # a DC offset, which SSAST removes
    ref = kaldi.fbank((wav - wav.mean())[None], htk_compat=True, sample_frequency=16000,
                      use_energy=False, window_type="hanning", num_mel_bins=128,
                      dither=0.0, frame_shift=10)
    fbank = compute_fbank(wav)
    assert fbank.shape == (48, 128)
    torch.testing.assert_close(fbank, ref)


def test_fbank_batch_pads_zeros_before_normalizing_and_cuts():
    a, b = torch.randn(5, 128), torch.randn(12, 128)
    feats, n_frames = fbank_batch([a, b], target_length=8, norm_mean=-2.0, norm_std=3.0)
    assert n_frames.tolist() == [5, 8]
    torch.testing.assert_close(feats[0, :5], (a + 2.0) / 6.0)
    torch.testing.assert_close(feats[0, 5:], torch.full((3, 128), 2.0 / 6.0))
    torch.testing.assert_close(feats[1], (b[:8] + 2.0) / 6.0)


def test_extract_layers_shapes_embeddings_and_mask():
    model = small_model()  # depth 4: two pairs; 64 frames -> 8 x 4 patches
    wavs = [waveform(0.6, seed=1), waveform(0.3, seed=2)]  # 58 and 28 frames
    out = model.extract_layers(wavs)
    assert len(out.hidden_states) == model.config.depth // 2 + 1 == 3
    assert all(h.shape == (2, 32, 32) for h in out.hidden_states)
    assert out.n_frames.tolist() == [58, 28]
    assert out.lengths.tolist() == [4 * 8, 2 * 8]  # ceil(58 / 16), ceil(28 / 16) columns
    assert out.mask[1].tolist() == [True] * 16 + [False] * 16  # time order: a prefix
    # X is the patch embedding plus the positional embedding, in time-major order.
    feats, _ = model.prepare_input(wavs)
    patches = model.patchify(feats)  # (B, P, 256), frequency-major
    weight = model.v.patch_embed.proj.weight.reshape(32, -1)
    x_model_order = patches @ weight.T + model.v.patch_embed.proj.bias + model.v.pos_embed[:, 1:]
    model_order = model.extract_layers(wavs, order="model")
    torch.testing.assert_close(model_order.hidden_states[0], x_model_order, rtol=1e-5, atol=1e-5)
    grid = x_model_order.reshape(2, 8, 4, 32).transpose(1, 2).reshape(2, 32, 32)
    torch.testing.assert_close(out.hidden_states[0], grid, rtol=1e-5, atol=1e-5)
    mask = model_order.mask[1].reshape(8, 4)
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_extract_layers_is_batch_invariant_and_accepts_fbank():
    model = small_model(seed=3)
    wavs = [waveform(0.7, seed=4), waveform(0.25, seed=5)]
    together = model.extract_layers(wavs)
    alone = model.extract_layers([wavs[1]])
    for h_batch, h_alone in zip(together.hidden_states, alone.hidden_states):
        torch.testing.assert_close(h_batch[1:], h_alone, rtol=1e-5, atol=1e-5)
    padded = torch.zeros(2, 11200)
    padded[0], padded[1, :4000] = wavs[0], wavs[1]
    from_padded = model.extract_layers(padded, wav_lengths=[11200, 4000])
    from_fbank = model.extract_layers(fbank=[compute_fbank(w) for w in wavs])
    for a, b, c in zip(together.hidden_states, from_padded.hidden_states, from_fbank.hidden_states):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_final_norm_and_unpaired_layers():
    model = small_model(paired_layers=False)
    out = model.extract_layers([waveform(0.5)], final_norm=True)
    assert len(out.hidden_states) == 4 + 1
    feats, _ = model.prepare_input([waveform(0.5)])
    final = model(feats)[:, 1:]
    torch.testing.assert_close(out.hidden_states[-1], model._to_time_order(final))


def test_bad_inputs_raise_clear_errors():
    model = small_model(norm_mean=None, norm_std=None)
    with pytest.raises(ValueError, match="norm_mean"):
        model.extract_layers([waveform(0.5)])
    model = small_model()
    with pytest.raises(ValueError, match=r"utt7: 14 fbank frames is shorter than one patch"):
        model.extract_layers([waveform(0.16)], names=["utt7"])  # 14 frames < 16
    with pytest.raises(ValueError, match="shorter than one fbank window"):
        model.extract_layers([torch.zeros(300)])
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        model.extract_layers([waveform(0.5)], sample_rate=8000)
    with pytest.raises(ValueError, match="exactly one of wavs and fbank"):
        model.extract_layers()
    with pytest.raises(ValueError, match=r"expects input \(B, 64, 128\)"):
        model(torch.zeros(1, 100, 128))
    with pytest.raises(ValueError, match="NaN"):
        compute_fbank(torch.full((1000,), float("nan")))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(embed_dim=0), "embed_dim"),
        (dict(depth=3), "depth"),
        (dict(norm="batch"), "norm"),
        (dict(input_tdim=8), "input_tdim"),
        (dict(backend="tpu"), "backend"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(norm_mean=1.0, norm_std=None), "norm_mean and norm_std"),
        (dict(norm_std=-1.0, norm_mean=0.0), "norm_std"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SSAMBAConfig(**kwargs)


def test_ssamba_config_rejects_unknown_size():
    with pytest.raises(ValueError, match="size must be one of"):
        ssamba_config("huge")


# --------------------------------------------------------------- pretraining
def test_cluster_mask_stays_in_valid_patches():
    gen = torch.Generator().manual_seed(0)
    for valid_t in (1, 3, 10):
        idx = cluster_mask(8, valid_t, 10, n_mask=min(20, 8 * valid_t), generator=gen)
        assert len(idx) == len(set(idx.tolist())) == min(20, 8 * valid_t)
        assert ((idx % 10) < valid_t).all() and (idx < 80).all()
    with pytest.raises(ValueError, match="n_mask"):
        cluster_mask(2, 2, 4, n_mask=5)


def test_pretrain_loss_analytic_values():
    """With zeroed head outputs: every score is 0 (nce = log n) and mse = mean(target^2)."""
    model = small_model()
    with torch.no_grad():
        for head in (model.cpredlayer, model.gpredlayer):
            head[2].weight.zero_()
            head[2].bias.zero_()
    feats, n_frames = model.prepare_input([waveform(0.6), waveform(0.4, seed=1)])
    gen = torch.Generator().manual_seed(0)
    result = pretrain_loss(model, feats, n_frames, mask_patch=10, max_mask_fraction=0.5,
                           generator=gen)
    assert result.n_masked == 20
    # Rebuild the masks with the same generator to get the targets.
    gen = torch.Generator().manual_seed(0)
    cfg = model.config
    idx = [cluster_mask(8, 4, 4, 10, gen), cluster_mask(8, 3, 4, 10, gen)]
    patches = model.patchify(feats)
    targets = torch.cat([patches[0, idx[0]], patches[1, idx[1]]])
    torch.testing.assert_close(result.nce, torch.tensor(math.log(10.0)))
    torch.testing.assert_close(result.mse, targets.pow(2).mean())
    torch.testing.assert_close(result.loss, result.nce + 10 * result.mse)
    assert cfg.patch_dim == targets.shape[1]


def test_a_few_steps_reduce_the_pretraining_loss():
    model = small_model(seed=5).train()
    feats, n_frames = model.prepare_input([waveform(0.6, seed=s) for s in range(3)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        result = pretrain_loss(model, feats, n_frames, mask_patch=12,
                               generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_pretrain_loss_bad_arguments():
    model = small_model()
    feats, n_frames = model.prepare_input([waveform(0.5)])
    with pytest.raises(ValueError, match="mask_patch"):
        pretrain_loss(model, feats, n_frames, mask_patch=0)
    with pytest.raises(ValueError, match="max_mask_fraction"):
        pretrain_loss(model, feats, n_frames, max_mask_fraction=1.5)
    with pytest.raises(ValueError, match="at least one patch"):
        pretrain_loss(model, feats, torch.tensor([3]))


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and cuda_scan_available()),
    reason="needs CUDA and mamba_ssm's selective-scan kernel",
)
def test_torch_and_cuda_scans_give_the_same_features():
    model = small_model(seed=7, embed_dim=64, depth=4).cuda()
    wavs = [waveform(0.6, seed=1), waveform(0.3, seed=2)]
    model.set_scan_backend("torch")
    ref = model.extract_layers(wavs)
    model.set_scan_backend("cuda")
    out = model.extract_layers(wavs)
    for a, b in zip(ref.hidden_states, out.hidden_states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
