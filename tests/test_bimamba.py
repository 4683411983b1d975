"""Tests of reverse_padded, BiMamba and the ConBiMamba block (padding invariance)."""

import pytest
import torch

from espnet_mamba.nn import (
    BiMamba,
    ConBiMambaLayer,
    MaskedConvolutionModule,
    lengths_from_mask,
    reverse_padded,
)
from espnet_mamba.nn.bimamba import Padding

LENGTHS = [37, 20, 1, 50]


def padded_batch(lengths, dim, seed=0, pad_value=None):
    """Random sequences, padded to the longest with noise (or ``pad_value``)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randn(n, dim, generator=gen) for n in lengths]
    total = max(lengths)
    batch = torch.randn(len(lengths), total, dim, generator=gen) * 50  # loud padding
    if pad_value is not None:
        batch.fill_(pad_value)
    for i, seq in enumerate(seqs):
        batch[i, : len(seq)] = seq
    return seqs, batch, torch.tensor(lengths)


def assert_matches_alone(module_call, seqs, out, lengths, tol=1e-5):
    """Each valid part of ``out`` equals the module run on that sequence alone."""
    for i, seq in enumerate(seqs):
        alone = module_call(seq[None], torch.tensor([len(seq)]))[0]
        got = out[i, : lengths[i]]
        scale = alone.abs().max().clamp_min(1e-6)
        assert ((got - alone).abs().max() / scale) <= tol, f"sequence {i}"


def test_reverse_padded_matches_loop():
    x = torch.randn(4, 9, 3, 2)
    lengths = torch.tensor([9, 4, 0, 1])
    out = reverse_padded(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[b, :n], x[b, :n].flip(0))
        assert torch.equal(out[b, n:], x[b, n:])
    assert torch.equal(reverse_padded(out, lengths), x)  # an involution
    assert torch.equal(reverse_padded(x), x.flip(1))
    assert torch.equal(reverse_padded(x[:, :, 0, 0], lengths), out[:, :, 0, 0])  # (B, L)


def test_reverse_padded_rejects_bad_lengths():
    with pytest.raises(ValueError, match="lengths"):
        reverse_padded(torch.randn(2, 5, 3), torch.tensor([5, 4, 3]))


def test_padding_matches_loop_and_reverse_padded():
    lengths = torch.tensor([9, 4, 0, 1])
    padding = Padding(lengths, 9)
    for b, n in enumerate(lengths.tolist()):
        assert padding.pad[b, :, 0].tolist() == [t >= n for t in range(9)]
    x = torch.randn(4, 9, 3)
    assert torch.equal(padding.reverse(x), reverse_padded(x, lengths))
    assert torch.equal(padding.reverse(padding.reverse(x)), x)
    y = torch.randn(4, 9, 5)  # another feature size: its own expanded index
    assert torch.equal(padding.reverse(y), reverse_padded(y, lengths))
    assert padding.lengths.dtype == torch.long
    valid = padding.valid(torch.float64)
    assert valid.dtype == torch.float64 and valid.shape == (4, 9, 1)
    assert torch.equal(valid, (~padding.pad).double())
    assert padding.valid(torch.float64) is valid  # built once per dtype


def test_padding_clamps_and_rejects():
    # Lengths are not read on the host; out-of-range values are clamped.
    padding = Padding(torch.tensor([12, -3]), 5)
    assert padding.lengths.tolist() == [5, 0]
    x = torch.randn(2, 5, 2)
    assert torch.equal(padding.reverse(x), reverse_padded(x, torch.tensor([5, 0])))
    with pytest.raises(ValueError, match="integer"):
        Padding(torch.tensor([2.0, 3.0]), 5)
    with pytest.raises(ValueError, match="lengths"):
        Padding(torch.tensor([[2, 3]]), 5)
    with pytest.raises(ValueError, match="padding describes"):
        padding.check(torch.randn(2, 6, 3))


def test_lengths_from_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert lengths_from_mask(mask).tolist() == [3, 1, 0]
    assert lengths_from_mask(mask[:, None]).tolist() == [3, 1, 0]
    with pytest.raises(ValueError, match="prefix"):
        lengths_from_mask(torch.tensor([[1, 0, 1]], dtype=torch.bool))


def test_bimamba_is_forward_plus_reversed_backward():
    torch.manual_seed(0)
    layer = BiMamba(d_model=8, d_state=4)
    x = torch.randn(2, 25, 8)
    expected = layer.out_proj(
        torch.cat((layer.mamba_fwd(x), layer.mamba_bwd(x.flip(1)).flip(1)), dim=-1)
    )
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # Full lengths behave like no lengths.
    assert torch.allclose(layer(x, lengths=torch.tensor([25, 25])), expected, atol=1e-6)


def test_bimamba_backward_direction_sees_the_future():
    torch.manual_seed(0)
    layer = BiMamba(d_model=8, d_state=4)
    x = torch.randn(1, 30, 8)
    x2 = x.clone()
    x2[:, 25:] += 1.0
    assert not torch.allclose(layer(x)[:, :20], layer(x2)[:, :20])


def test_bimamba_padding_invariance():
    torch.manual_seed(0)
    layer = BiMamba(d_model=8, d_state=4)
    seqs, batch, lengths = padded_batch(LENGTHS, 8)
    out = layer(batch, lengths=lengths)
    assert_matches_alone(lambda x, n: layer(x, lengths=n), seqs, out, lengths)
    for i, n in enumerate(LENGTHS):
        assert torch.all(out[i, n:] == 0)
    mask = torch.arange(max(LENGTHS))[None, :] < lengths[:, None]
    assert torch.equal(layer(batch, mask=mask[:, None]), out)
    with pytest.raises(ValueError, match="not both"):
        layer(batch, lengths=lengths, mask=mask)
    with pytest.raises(ValueError, match=r"lie in \[0, 50\]"):
        layer(batch, lengths=lengths + 1)


def test_bimamba_with_shared_padding():
    """A shared Padding gives the valid frames of lengths=..., without zeroing the rest."""
    torch.manual_seed(0)
    layer = BiMamba(d_model=8, d_state=4)
    _, batch, lengths = padded_batch(LENGTHS, 8)
    padding = Padding(lengths, batch.shape[1])
    out = layer(batch, padding=padding)
    reference = layer(batch, lengths=lengths)
    assert torch.equal(out.masked_fill(padding.pad, 0.0), reference)
    assert out[2, 1:].abs().sum() > 0  # padding frames are left as computed
    with pytest.raises(ValueError, match="not both"):
        layer(batch, lengths=lengths, padding=padding)
    with pytest.raises(ValueError, match="padding describes"):
        layer(batch[:, :10], padding=padding)


@pytest.mark.parametrize("use_batch_norm", [True, False])
def test_masked_convolution_module_matches_conv1d_reference(use_batch_norm):
    """Pointwise convolutions run as matrix products: same values as Conv1d (float64)."""
    torch.manual_seed(0)
    module = MaskedConvolutionModule(8, kernel_size=7, use_batch_norm=use_batch_norm)
    module = module.double().train()
    _, batch, lengths = padded_batch(LENGTHS, 8)
    x = batch.double()
    h = torch.nn.functional.glu(module.pointwise_conv1(x.transpose(1, 2)), dim=1)
    valid = torch.arange(x.shape[1])[None, None, :] < lengths[:, None, None]
    h = module.depthwise_conv(h * valid)
    if use_batch_norm:
        h = module.norm(h)
    else:
        h = module.norm(h.transpose(1, 2)).transpose(1, 2)
    expected = module.pointwise_conv2(torch.nn.functional.silu(h)).transpose(1, 2)
    assert torch.allclose(module(x, lengths), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_batch_norm", [True, False])
def test_masked_convolution_module_padding_invariance(use_batch_norm):
    torch.manual_seed(0)
    module = MaskedConvolutionModule(8, kernel_size=7, use_batch_norm=use_batch_norm).eval()
    seqs, batch, lengths = padded_batch(LENGTHS, 8)
    out = module(batch, lengths)
    assert_matches_alone(module, seqs, out, lengths)
    assert torch.equal(module(batch, padding=Padding(lengths, batch.shape[1])), out)
    with pytest.raises(ValueError, match="not both"):
        module(batch, lengths, padding=Padding(lengths, batch.shape[1]))


@pytest.mark.parametrize("kernel_size", [0, 4, 2.0])
def test_masked_convolution_module_rejects_kernel(kernel_size):
    with pytest.raises(ValueError, match="kernel_size"):
        MaskedConvolutionModule(8, kernel_size=kernel_size)


def make_layer(**kwargs):
    torch.manual_seed(0)
    defaults = dict(size=16, linear_units=32, cnn_module_kernel=7, d_state=4)
    defaults.update(kwargs)
    return ConBiMambaLayer(**defaults)


@pytest.mark.parametrize("use_batch_norm", [True, False])
@pytest.mark.parametrize("normalize_before", [True, False])
def test_layer_padding_invariance_eval(use_batch_norm, normalize_before):
    layer = make_layer(use_batch_norm=use_batch_norm, normalize_before=normalize_before)
    layer.eval()
    seqs, batch, lengths = padded_batch(LENGTHS, 16)
    with torch.no_grad():
        out = layer(batch, lengths=lengths)
        mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None])[:, None]
        assert torch.equal(layer(batch, mask=mask), out)
        assert_matches_alone(lambda x, n: layer(x, lengths=n), seqs, out, lengths)
    assert torch.isfinite(out).all()


def test_layer_padding_invariance_training_with_layer_norm():
    """Without BatchNorm and dropout, even training mode is per-sequence."""
    layer = make_layer(use_batch_norm=False, dropout_rate=0.0).train()
    seqs, batch, lengths = padded_batch(LENGTHS, 16)
    out = layer(batch, lengths=lengths)
    assert_matches_alone(lambda x, n: layer(x, lengths=n), seqs, out, lengths)


@pytest.mark.parametrize("normalize_before", [True, False])
def test_layer_shared_padding_equals_lengths(normalize_before):
    layer = make_layer(normalize_before=normalize_before).eval()
    _, batch, lengths = padded_batch(LENGTHS, 16)
    with torch.no_grad():
        out = layer(batch, padding=Padding(lengths, batch.shape[1]))
        assert torch.equal(out, layer(batch, lengths=lengths))
    with pytest.raises(ValueError, match="padding describes"):
        layer(batch[:2], padding=Padding(lengths, batch.shape[1]))


def test_layer_residual_is_scaled_sum():
    """The one-op residual ``add(x, y, alpha=0.5)`` equals ``x + 0.5 * y`` exactly."""
    layer = make_layer().eval()
    x = torch.randn(3, 20, 16)
    with torch.no_grad():
        got = layer._residual(x, layer.norm_ff, layer.feed_forward, 0.5)
        expected = x + 0.5 * layer.feed_forward(layer.norm_ff(x))
    assert torch.equal(got, expected)


def test_layer_reads_no_tensor_values():
    """Forward and backward on the meta device, where reading any tensor value
    (``.item()``, ``bool(t)``, ``.tolist()``) raises: with GPU lengths or a shared
    Padding the layer never waits for the device."""
    layer = make_layer().train().to("meta")
    x = torch.empty(3, 20, 16, device="meta", requires_grad=True)
    lengths = torch.empty(3, dtype=torch.long, device="meta")
    for kwargs in (dict(lengths=lengths), dict(padding=Padding(lengths, 20))):
        layer(x, **kwargs).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_layer_structure_and_gradients():
    layer = make_layer()
    x = torch.randn(2, 12, 16)
    out = layer(x, lengths=torch.tensor([12, 7]))
    # The block ends with LayerNorm: each frame has zero mean and unit variance.
    assert torch.allclose(out.mean(-1), torch.zeros(2, 12), atol=1e-5)
    out.square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_layer_validation():
    with pytest.raises(ValueError, match="size"):
        ConBiMambaLayer(0)
    with pytest.raises(ValueError, match="linear_units"):
        ConBiMambaLayer(8, linear_units=-1)
    with pytest.raises(ValueError, match="dropout_rate"):
        ConBiMambaLayer(8, dropout_rate=1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        ConBiMambaLayer(8, cnn_module_kernel=30)
    with pytest.raises(ValueError, match="d_state"):
        ConBiMambaLayer(8, d_state=0)
    layer = make_layer()
    with pytest.raises(ValueError, match="expects input"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="lengths"):
        layer(torch.randn(2, 5, 16), lengths=torch.tensor([6, 5]))
    with pytest.raises(ValueError, match="not both"):
        layer(torch.randn(2, 5, 16), mask=torch.ones(2, 1, 5, dtype=torch.bool),
              lengths=torch.tensor([5, 5]))
