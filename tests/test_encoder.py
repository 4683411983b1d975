"""Tests of ConBiMambaEncoder: shapes, layer outputs, padding invariance, dtypes, validation."""

import copy

import pytest
import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_mamba import encoder as encoder_module
from espnet_mamba.encoder import ConBiMambaEncoder
from espnet_mamba.espnet_compat import TooShortUttError
from espnet_mamba.nn import bimamba as bimamba_module

SMALL = dict(output_size=16, linear_units=32, num_blocks=2, cnn_module_kernel=5, d_state=4)


def make_encoder(input_size=20, **kwargs):
    torch.manual_seed(0)
    config = dict(SMALL)
    config.update(kwargs)
    return ConBiMambaEncoder(input_size, **config)


def expected_olens(input_layer, ilens):
    """Frames produced by the valid 2-D convolutions from ilens frames."""
    out = []
    for n in ilens:
        if input_layer == "conv2d":
            out.append(((n - 1) // 2 - 1) // 2)
        elif input_layer == "conv2d6":
            out.append(((n - 1) // 2 - 2) // 3)
        elif input_layer == "conv2d8":
            out.append((((n - 1) // 2 - 1) // 2 - 1) // 2)
        else:
            out.append(n)
    return out


@pytest.mark.parametrize("input_layer", ["conv2d", "conv2d6", "conv2d8", "linear", None])
def test_output_shapes_and_olens(input_layer):
    input_size = 16 if input_layer is None else 20
    encoder = make_encoder(input_size, input_layer=input_layer).eval()
    assert isinstance(encoder, AbsEncoder)
    assert encoder.output_size() == 16
    ilens = [90, 61, 30]
    xs = torch.randn(3, 90, input_size)
    out, olens, states = encoder(xs, torch.tensor(ilens))
    assert states is None
    assert olens.tolist() == expected_olens(input_layer, ilens)
    assert out.shape == (3, olens.max().item(), 16)
    for i, n in enumerate(olens.tolist()):
        assert torch.all(out[i, n:] == 0)


@pytest.mark.parametrize("input_layer", ["conv2d", "linear"])
@pytest.mark.parametrize("pos_enc", ["abs", "conv", "none"])
def test_padding_invariance(input_layer, pos_enc):
    encoder = make_encoder(input_layer=input_layer, pos_enc=pos_enc).eval()
    gen = torch.Generator().manual_seed(1)
    ilens = [75, 40, 23, 9]
    xs = torch.randn(4, 75, 20, generator=gen)
    for i, n in enumerate(ilens):
        xs[i, n:] = 100.0  # loud padding
    with torch.no_grad():
        out, olens, _ = encoder(xs, torch.tensor(ilens))
        for i, n in enumerate(ilens):
            alone, olen_alone, _ = encoder(xs[i : i + 1, :n], torch.tensor([n]))
            assert olen_alone.item() == olens[i].item() == alone.shape[1]
            err = (out[i, : olens[i]] - alone[0]).abs().max() / alone.abs().max()
            assert err <= 1e-5, f"utterance {i}"


@pytest.mark.parametrize("pos_enc", ["abs", "conv"])
def test_nan_padding_never_reaches_valid_frames(pos_enc):
    encoder = make_encoder(pos_enc=pos_enc).eval()
    ilens = [75, 40, 23]
    xs = torch.randn(3, 75, 20)
    for i, n in enumerate(ilens):
        xs[i, n:] = float("nan")
    with torch.no_grad():
        out, olens, _ = encoder(xs, torch.tensor(ilens))
        for i, n in enumerate(ilens):
            alone, _, _ = encoder(xs[i : i + 1, :n], torch.tensor([n]))
            assert torch.allclose(out[i, : olens[i]], alone[0], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all()
    assert all(torch.all(out[i, n:] == 0) for i, n in enumerate(olens.tolist()))


@pytest.mark.parametrize("pos_enc", ["abs", "conv"])
def test_forward_backward_read_no_tensor_values(pos_enc):
    """The whole step runs on the meta device, where reading a tensor value on the
    host (``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``, a data-dependent
    shape) raises. So with ilens on a GPU, as ESPnet passes them, the encoder never
    makes the host wait for the GPU."""
    encoder = make_encoder(num_blocks=3, interctc_layer_idx=[1], pos_enc=pos_enc)
    encoder = encoder.train().to("meta")
    xs = torch.empty(3, 90, 20, device="meta", requires_grad=True)
    ilens = torch.empty(3, dtype=torch.long, device="meta")
    (out, inter), olens, _ = encoder(xs, ilens)
    (out.sum() + inter[0][1].sum()).backward()
    assert out.shape == (3, 21, 16) and olens.shape == (3,)
    assert all(p.grad is not None for p in encoder.parameters())
    hidden, _ = encoder.forward_layers(xs, ilens)
    assert len(hidden) == 4
    masks = torch.empty(3, 90, dtype=torch.bool, device="meta")
    encoder(xs, ilens, masks=masks, return_all_hs=True)


def test_padding_is_built_once_per_forward(monkeypatch):
    """Masks, lengths and the reversal index are built once and shared by all blocks."""
    built = []

    class CountingPadding(bimamba_module.Padding):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)

    monkeypatch.setattr(encoder_module, "Padding", CountingPadding)
    monkeypatch.setattr(bimamba_module, "Padding", CountingPadding)
    seen = []
    encoder = make_encoder(num_blocks=3).train()
    for block in encoder.encoders:
        block.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["padding"]), with_kwargs=True
        )
    encoder(torch.randn(2, 60, 20), torch.tensor([60, 33]))[0].sum().backward()
    assert len(built) == 1 and seen == built * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_synchronisation():
    encoder = make_encoder(num_blocks=2).cuda().train()
    xs = torch.randn(2, 60, 20, device="cuda")
    ilens = torch.tensor([60, 33], device="cuda")
    encoder(xs, ilens)[0].sum().backward()  # warm-up (cuDNN, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _, _ = encoder(xs, ilens)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_forward_layers():
    encoder = make_encoder(num_blocks=3).eval()
    xs = torch.randn(2, 60, 20)
    ilens = torch.tensor([60, 33])
    with torch.no_grad():
        hidden, olens = encoder.forward_layers(xs, ilens)
        out, olens_fwd, _ = encoder(xs, ilens)
        embedded, _ = encoder.embed(xs, None)
    assert len(hidden) == 4
    assert torch.equal(olens, olens_fwd)
    assert all(h.shape == out.shape for h in hidden)
    assert torch.equal(hidden[-1], out)
    # X is the first block's input: subsampling + positional encoding.
    assert torch.allclose(hidden[0][0], embedded[0])
    assert torch.allclose(hidden[0][1, : olens[1]], embedded[1, : olens[1]])
    # T_1 is block 1 applied to X.
    with torch.no_grad():
        t1 = encoder.encoders[0](hidden[0], lengths=olens)
    assert torch.allclose(hidden[1][1, : olens[1]], t1[1, : olens[1]])
    for h in hidden:
        assert torch.all(h[1, olens[1] :] == 0)


def test_return_all_hs_and_ssl_masks():
    encoder = make_encoder(num_blocks=3).eval()
    xs = torch.randn(2, 60, 20)
    ilens = torch.tensor([60, 33])
    pad_mask = torch.arange(60)[None, :] >= ilens[:, None]
    with torch.no_grad():
        (out, layers), olens, _ = encoder(xs, ilens, masks=pad_mask, return_all_hs=True)
        hidden, _ = encoder.forward_layers(xs, ilens)
    assert len(layers) == 3
    assert torch.equal(layers[0], hidden[1]) and torch.equal(layers[1], hidden[2])
    # The last raw block output becomes the final output through after_norm.
    final = encoder.after_norm(layers[2])
    for i, n in enumerate(olens.tolist()):
        assert torch.allclose(final[i, :n], out[i, :n], atol=1e-6)
    with pytest.raises(ValueError, match="masks"):
        encoder(xs, ilens, masks=pad_mask[:, :10])


class _FakeCTC(torch.nn.Module):
    def __init__(self, dim, vocab):
        super().__init__()
        self.proj = torch.nn.Linear(dim, vocab)

    def softmax(self, x):
        return torch.softmax(self.proj(x), dim=-1)


def test_interctc_outputs_and_conditioning():
    encoder = make_encoder(num_blocks=3, interctc_layer_idx=[1, 2]).eval()
    xs = torch.randn(2, 60, 20)
    ilens = torch.tensor([60, 40])
    with torch.no_grad():
        (out, inter), olens, _ = encoder(xs, ilens)
        hidden, _ = encoder.forward_layers(xs, ilens)
    assert [idx for idx, _ in inter] == [1, 2]
    assert torch.allclose(
        inter[0][1][1, : olens[1]], encoder.after_norm(hidden[1])[1, : olens[1]]
    )
    assert torch.equal(out, hidden[-1])

    conditioned = make_encoder(
        num_blocks=3, interctc_layer_idx=[1], interctc_use_conditioning=True
    ).eval()
    ctc = _FakeCTC(16, 7)
    with pytest.raises(ValueError, match="conditioning"):
        conditioned(xs, ilens, ctc=ctc)
    conditioned.conditioning_layer = torch.nn.Linear(7, 16)
    with torch.no_grad():
        (out_c, inter_c), _, _ = conditioned(xs, ilens, ctc=ctc)
        plain_hidden, _ = conditioned.forward_layers(xs, ilens, ctc=ctc)
        conditioned.conditioning_layer.weight.zero_()
        conditioned.conditioning_layer.bias.zero_()
        (out_zero, _), _, _ = conditioned(xs, ilens, ctc=ctc)
    assert len(inter_c) == 1
    assert torch.equal(plain_hidden[-1], out_c)
    # With a zero conditioning layer the output is the unconditioned one.
    unconditioned = make_encoder(num_blocks=3).eval()
    unconditioned.load_state_dict(conditioned.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(out_zero, unconditioned(xs, ilens)[0], atol=1e-6)
    assert not torch.allclose(out_zero, out_c)


@pytest.mark.parametrize("pos_enc", ["abs", "conv"])
def test_training_backward(pos_enc):
    encoder = make_encoder(pos_enc=pos_enc).train()
    out, olens, _ = encoder(torch.randn(2, 50, 20), torch.tensor([50, 31]))
    out.square().sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_input_errors():
    encoder = make_encoder()
    xs = torch.randn(2, 40, 20)
    with pytest.raises(ValueError, match="xs_pad must be"):
        encoder(xs[0], torch.tensor([40]))
    with pytest.raises(ValueError, match="feature size 19"):
        encoder(xs[:, :, :19], torch.tensor([40, 40]))
    with pytest.raises(ValueError, match="longer than xs_pad"):
        encoder(xs, torch.tensor([41, 40]))
    with pytest.raises(ValueError, match="positive"):
        encoder(xs, torch.tensor([40, 0]))
    with pytest.raises(ValueError, match="ilens"):
        encoder(xs, torch.tensor([40]))
    with pytest.raises(TooShortUttError):
        encoder(torch.randn(1, 6, 20), torch.tensor([6]))


@pytest.mark.parametrize(
    "dtype, match",
    [
        (torch.float64, r"xs_pad is torch\.float64 but the encoder's parameters are "
                        r"torch\.float32: .*encoder\.double\(\)"),
        (torch.float16, r"xs_pad is torch\.float16 but .*torch\.float32.*torch\.autocast"),
        (torch.bfloat16, r"xs_pad is torch\.bfloat16 but .*torch\.float32.*torch\.autocast"),
        (torch.long, r"xs_pad must hold floating-point features, got torch\.int64"),
    ],
)
def test_input_dtype_errors_name_the_dtypes_and_the_remedy(dtype, match):
    encoder = make_encoder()
    xs = torch.randn(2, 40, 20).to(dtype)
    with pytest.raises(ValueError, match=match):
        encoder(xs, torch.tensor([40, 30]))
    if dtype in (torch.float64, torch.long):  # dtypes that autocast does not cast
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match=match):
            encoder.forward_layers(xs, torch.tensor([40, 30]))


@pytest.mark.parametrize("pos_enc", ["abs", "conv"])
def test_float64_encoder_matches_float32(pos_enc):
    encoder = make_encoder(pos_enc=pos_enc).eval()
    xs = torch.randn(2, 60, 20)
    ilens = torch.tensor([60, 37])
    with torch.no_grad():
        out32, _, _ = encoder(xs, ilens)
        out64, _, _ = copy.deepcopy(encoder).double()(xs.double(), ilens)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_runs_under_autocast(dtype):
    """float32 parameters, half-precision input, autocast (as ESPnet's use_amp)."""
    encoder = make_encoder(pos_enc="conv").eval()
    xs = torch.randn(2, 60, 20)
    ilens = torch.tensor([60, 37])
    with torch.no_grad():
        reference, _, _ = encoder(xs, ilens)
        with torch.autocast("cpu", dtype=dtype):
            out, olens, _ = encoder(xs.to(dtype), ilens)
    assert out.dtype == dtype and olens.tolist() == [14, 8]
    assert (out.float() - reference).abs().max() <= 0.05 * reference.abs().max()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(output_size=0), "output_size"),
        (dict(linear_units=0), "linear_units"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(dropout_rate=-0.1), "dropout_rate"),
        (dict(positional_dropout_rate=1.0), "positional_dropout_rate"),
        (dict(input_layer="embed"), "input_layer"),
        (dict(input_layer=None), "input_layer=None"),
        (dict(pos_enc="rel"), "pos_enc must be 'abs', 'conv' or 'none'"),
        (dict(pos_enc="conv", pos_conv_kernel=0), "pos_conv_kernel must be a positive"),
        (dict(pos_enc="conv", pos_conv_groups=3), "pos_conv_groups=3 must divide output_size=16"),
        (dict(pos_enc="conv", pos_conv_groups=True), "pos_conv_groups must be a positive"),
        (dict(mamba_backend="tpu"), "mamba_backend"),
        (dict(interctc_layer_idx=[2]), "interctc_layer_idx"),
        (dict(interctc_layer_idx=[0]), "interctc_layer_idx"),
        (dict(cnn_module_kernel=4), "kernel_size"),
        (dict(d_state=0), "d_state"),
        (dict(expand=0), "expand"),
    ],
)
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_encoder(**kwargs)


def test_too_small_input_size_and_unknown_option():
    with pytest.raises(ValueError, match="input_size"):
        ConBiMambaEncoder(5, **SMALL)
    with pytest.raises(TypeError):
        ConBiMambaEncoder(20, attention_heads=4)
