"""Tests of the Mamba-1 block: mamba_ssm layout, initialization, and a per-frame reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from espnet_mamba.nn import mamba as mamba_module
from espnet_mamba.nn import selective_scan as scan_module
from espnet_mamba.nn import torch_scan
from espnet_mamba.nn.mamba import Mamba
from espnet_mamba.nn.selective_scan import cuda_scan_available, selective_scan_reference


def expected_layout(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", bias=False,
                    conv_bias=True):
    """State-dict keys and shapes of mamba_ssm.modules.mamba_simple.Mamba."""
    d_inner = int(expand * d_model)
    rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    layout = {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "x_proj.weight": (rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    if conv_bias:
        layout["conv1d.bias"] = (d_inner,)
    if bias:
        layout["in_proj.bias"] = (2 * d_inner,)
        layout["out_proj.bias"] = (d_model,)
    return layout


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(d_model=16),
        dict(d_model=40, d_state=8, d_conv=3, expand=1.5),
        dict(d_model=24, dt_rank=5, bias=True, conv_bias=False),
    ],
)
def test_state_dict_layout_matches_mamba_ssm(kwargs):
    layer = Mamba(**kwargs)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == expected_layout(**kwargs)


def test_initialization():
    torch.manual_seed(0)
    layer = Mamba(d_model=32, d_state=8, dt_min=0.002, dt_max=0.05)
    d_inner = 64
    assert torch.equal(layer.A_log, torch.log(torch.arange(1.0, 9.0)).repeat(d_inner, 1))
    assert layer.A_log.dtype == torch.float32
    assert torch.equal(layer.D, torch.ones(d_inner))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    bound = layer.dt_rank ** -0.5
    assert layer.dt_proj.weight.abs().max() <= bound
    constant = Mamba(d_model=32, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(constant.dt_proj.weight, torch.full((64, 2), 2.0 * 2 ** -0.5))


def sequential_mamba(layer: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Frame-by-frame Mamba in float64 from the layer's weights (independent path)."""
    p = {k: v.detach().double() for k, v in layer.state_dict().items()}
    x = x.double()
    batch, length, _ = x.shape
    d_inner, d_state, d_conv = layer.d_inner, layer.d_state, layer.d_conv
    A = -torch.exp(p["A_log"])
    conv_w = p["conv1d.weight"][:, 0]  # (d_inner, d_conv); tap d_conv-1 is "now"
    history = torch.zeros(batch, d_inner, d_conv, dtype=torch.float64)
    h = torch.zeros(batch, d_inner, d_state, dtype=torch.float64)
    outputs = []
    for t in range(length):
        xz = x[:, t] @ p["in_proj.weight"].T
        if "in_proj.bias" in p:
            xz = xz + p["in_proj.bias"]
        xi, z = xz[:, :d_inner], xz[:, d_inner:]
        history = torch.cat((history[:, :, 1:], xi[:, :, None]), dim=2)
        xc = (history * conv_w).sum(-1)
        if "conv1d.bias" in p:
            xc = xc + p["conv1d.bias"]
        xc = xc * torch.sigmoid(xc)
        proj = xc @ p["x_proj.weight"].T
        dt_in = proj[:, : layer.dt_rank]
        Bt = proj[:, layer.dt_rank : layer.dt_rank + d_state]
        Ct = proj[:, layer.dt_rank + d_state :]
        dt = torch.log1p(torch.exp(dt_in @ p["dt_proj.weight"].T + p["dt_proj.bias"]))
        h = torch.exp(dt[:, :, None] * A) * h + (dt * xc)[:, :, None] * Bt[:, None, :]
        y = (h * Ct[:, None, :]).sum(-1) + p["D"] * xc
        y = y * z * torch.sigmoid(z)
        out = y @ p["out_proj.weight"].T
        if "out_proj.bias" in p:
            out = out + p["out_proj.bias"]
        outputs.append(out)
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize("length", [1, 3, 40, 130])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_sequential_reference(monkeypatch, length, bias):
    monkeypatch.setattr(torch_scan, "_CHUNK_ELEMENTS", 1)  # several chunks
    torch.manual_seed(length)
    layer = Mamba(d_model=16, d_state=4, d_conv=3, bias=bias, backend="torch")
    # Larger step sizes than the default init, so that the state matters.
    with torch.no_grad():
        layer.dt_proj.bias.add_(2.0)
    x = torch.randn(2, length, 16)
    y = layer(x)
    ref = sequential_mamba(layer, x)
    assert y.shape == x.shape and y.dtype == torch.float32
    err = (y.double() - ref).abs().max() / ref.abs().max()
    assert err <= 1e-5
    # The same module in float64 agrees to float64 precision.
    y64 = layer.double()(x.double())
    assert ((y64 - ref).abs().max() / ref.abs().max()) <= 1e-12


def test_causal():
    torch.manual_seed(0)
    layer = Mamba(d_model=8, d_state=4).eval()
    x = torch.randn(1, 30, 8)
    x2 = x.clone()
    x2[:, 20:] = torch.randn(1, 10, 8) * 100
    assert torch.allclose(layer(x)[:, :20], layer(x2)[:, :20], atol=0, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    layer = Mamba(d_model=8, d_state=4, bias=True)
    layer(torch.randn(2, 20, 8)).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_rejects_wrong_input_shape():
    layer = Mamba(d_model=8)
    with pytest.raises(ValueError, match="Mamba expects"):
        layer(torch.randn(2, 10, 9))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_model=0), "d_model"),
        (dict(d_model=8.0), "d_model"),
        (dict(d_model=8, d_state=0), "d_state"),
        (dict(d_model=8, d_conv=-1), "d_conv"),
        (dict(d_model=8, expand=0), "expand"),
        (dict(d_model=8, dt_rank="full"), "dt_rank"),
        (dict(d_model=8, dt_rank=0), "dt_rank"),
        (dict(d_model=8, dt_min=0.0), "dt_min"),
        (dict(d_model=8, dt_min=0.2, dt_max=0.1), "dt_max"),
        (dict(d_model=8, dt_init="normal"), "dt_init"),
        (dict(d_model=8, dt_scale=0.0), "dt_scale"),
        (dict(d_model=8, backend="jax"), "backend"),
    ],
)
def test_invalid_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Mamba(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and cuda_scan_available()),
    reason="needs CUDA and mamba_ssm",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_torch_and_cuda_backends_agree(dtype):
    torch.manual_seed(0)
    layer = Mamba(d_model=64, backend="torch").cuda()
    x = torch.randn(2, 300, 64, device="cuda")
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        y_torch = layer(x)
        layer.backend = "cuda"
        y_cuda = layer(x)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    err = (y_torch.float() - y_cuda.float()).abs().max() / y_cuda.float().abs().max()
    assert err <= tol


def test_channel_matmul_matches_einsum_for_any_layout():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    contiguous = torch.randn(3, 5, 7, dtype=torch.float64, generator=gen)
    channel_major = contiguous.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    for x in (contiguous, channel_major, contiguous[..., :4]):
        x = x.detach().requires_grad_()
        y = mamba_module._channel_matmul(weight, x)
        ref = torch.einsum("oi,bil->bol", weight, x)
        assert y.is_contiguous() and torch.allclose(y, ref, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(y.sin().sum(), (weight, x))
        ref_grads = torch.autograd.grad(ref.sin().sum(), (weight, x))
        for got, want in zip(grads, ref_grads):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def _kernel_stand_in(calls):
    """A stand-in for mamba_ssm's selective_scan_fn that records its inputs' time
    strides (its wrapper copies any tensor whose time stride is not 1) and whether
    B, C and z are views (i.e. nobody copied them on the way)."""

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        tensors = dict(u=u, delta=delta, B=B, C=C, z=z)
        calls.append({name: t.stride(-1) for name, t in tensors.items()})
        calls.append({name: tensors[name]._is_view() for name in ("B", "C", "z")})
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    return scan


def test_cuda_path_passes_tensors_without_copies(monkeypatch):
    """The CUDA path (simulated on CPU) hands the kernel unit-stride views, made
    without copies, and gives what the torch backend gives."""
    torch.manual_seed(0)
    layer = Mamba(d_model=16, d_state=4, backend="torch")
    x = torch.randn(2, 30, 16)
    y_torch = layer(x)
    grads_torch = torch.autograd.grad(y_torch.square().sum(), list(layer.parameters()))

    calls = []
    monkeypatch.setattr(scan_module, "_cuda_selective_scan_fn", _kernel_stand_in(calls))
    monkeypatch.setattr(scan_module, "resolve_backend", lambda backend, device: "cuda")
    monkeypatch.setattr(mamba_module, "resolve_backend", lambda backend, device: "cuda")
    monkeypatch.setattr(mamba_module, "causal_conv1d_fn", None)
    y_cuda = layer(x)
    grads_cuda = torch.autograd.grad(y_cuda.square().sum(), list(layer.parameters()))
    assert calls == [dict(u=1, delta=1, B=1, C=1, z=1), dict(B=True, C=True, z=True)]
    assert torch.allclose(y_cuda, y_torch, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_cuda, grads_torch):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
