"""Tests of the Triton selective scan and causal convolution.

On a machine without CUDA the kernels run through Triton's interpreter
(``TRITON_INTERPRET=1``, set here before anything imports Triton: the Triton modules
of espnet_mamba are imported only when the Triton backend is first used). The
interpreter visits every element of a scan in Python, so the CPU tests use small
shapes and 8-frame chunks (many chunk boundaries in a few dozen frames). On CUDA the
same tests run compiled, and the GPU-only tests cover lengths up to 2000, bfloat16
and agreement with mamba_ssm's kernel.

Error metric: ``max |x - ref| / max |ref|`` per tensor against
:func:`selective_scan_reference` in float64.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed (tools/install.sh installs it)")

import torch.nn.functional as F  # noqa: E402

from espnet_mamba.nn import BiMamba, Mamba  # noqa: E402
from espnet_mamba.nn import selective_scan as scan_module  # noqa: E402
from espnet_mamba.nn.selective_scan import (  # noqa: E402
    BACKEND_ENV_VAR,
    resolve_backend,
    reverse_index,
    selective_scan,
    selective_scan_reference,
    triton_interpreter_enabled,
)

if not CUDA and not triton_interpreter_enabled():
    pytest.skip("no CUDA, and TRITON_INTERPRET is set to something else than 1",
                allow_module_level=True)

from espnet_mamba.nn import triton_conv, triton_scan  # noqa: E402
from espnet_mamba.nn.triton_conv import triton_causal_conv1d  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
gpu_only = pytest.mark.skipif(not CUDA, reason="needs CUDA (compiled Triton kernels)")


@pytest.fixture
def short_chunks(monkeypatch):
    """8-frame chunks on the CPU (the interpreter's cost grows with padded frames)."""
    if not CUDA:
        monkeypatch.setattr(triton_scan, "_BLOCK_T", 8)
        monkeypatch.setattr(triton_conv, "_BLOCK_T", 8)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def make_inputs(batch, dim, n_state, length, groups=0, seed=0, dtype=torch.float32):
    """Random scan inputs on DEVICE; ``groups > 0`` gives ``(B, G, N, L)`` matrices."""
    gen = torch.Generator().manual_seed(seed)
    mat = (batch, groups, n_state, length) if groups else (batch, n_state, length)
    inputs = [
        torch.randn(batch, dim, length, generator=gen),
        torch.randn(batch, dim, length, generator=gen),
        -torch.rand(dim, n_state, generator=gen) * 4 - 0.01,
        torch.randn(*mat, generator=gen),
        torch.randn(*mat, generator=gen),
        torch.randn(dim, generator=gen),
        torch.randn(batch, dim, length, generator=gen),
        torch.randn(dim, generator=gen) * 0.5,
    ]
    return [t.to(DEVICE, dtype) for t in inputs]


def scan_and_grads(inputs, grad_out, backend=None, **options):
    """Output and the gradients of all 8 inputs (the reference when ``backend`` is None)."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    kwargs = dict(D=leaves[5], z=leaves[6], delta_bias=leaves[7], delta_softplus=True, **options)
    if backend is None:
        y = selective_scan_reference(*leaves[:5], **kwargs)
    else:
        y = selective_scan(*leaves[:5], backend=backend, **kwargs)
    y.backward(grad_out)
    return [y] + [t.grad for t in leaves]


def assert_matches_reference(inputs, tol, **options):
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(7))
    grad_out = grad_out.to(DEVICE, inputs[0].dtype)
    ours = scan_and_grads(inputs, grad_out, backend="triton", **options)
    ref = scan_and_grads([t.double() for t in inputs], grad_out.double(), **options)
    assert ours[0].dtype == inputs[0].dtype
    for name, x, r in zip(["y"] + NAMES, ours, ref):
        assert torch.isfinite(x).all(), name
        if r.abs().max() == 0:  # e.g. dA of length-1 sequences (h[-1] = 0)
            assert x.abs().max() <= 1e-6, name  # compiled kernels leave rounding noise
            continue
        assert rel_err(x, r) <= tol, (name, rel_err(x, r))


@pytest.mark.parametrize("length", [1, 37])
def test_forward_and_gradients_match_reference(length):
    """Default chunking (16 frames): 37 frames span three chunks."""
    assert_matches_reference(make_inputs(2, 4, 4, length, seed=length), tol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_lengths_reverse_and_groups(short_chunks, dtype, tol):
    """Group 0 reads forwards, group 1 backwards within each length (0, 1, 13, 21)."""
    inputs = make_inputs(4, 4, 3, 21, groups=2, seed=1, dtype=dtype)
    lengths = torch.tensor([21, 1, 13, 0], device=DEVICE)
    assert_matches_reference(inputs, tol, lengths=lengths, reverse=(False, True))


def test_reverse_without_lengths_is_a_flip(short_chunks):
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 3, 2, 19, seed=2)
    y = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, reverse=True, backend="triton")
    flipped = selective_scan(*(t.flip(-1) for t in (u, delta)), A, B.flip(-1), C.flip(-1), D,
                             z.flip(-1), delta_bias, True, backend="triton")
    assert rel_err(y, flipped.flip(-1)) <= 1e-6


def test_without_optional_inputs(short_chunks):
    u, delta, A, B, C, *_ = make_inputs(2, 3, 2, 17, seed=3)
    delta = delta.abs()  # positive steps without softplus
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    y = selective_scan(*leaves, backend="triton")
    y.backward(torch.ones_like(y))
    ref_leaves = [t.double().requires_grad_() for t in (u, delta, A, B, C)]
    y_ref = selective_scan_reference(*ref_leaves)
    y_ref.backward(torch.ones_like(y_ref))
    assert rel_err(y, y_ref) <= 1e-5
    for name, x, r in zip(NAMES, leaves, ref_leaves):
        assert rel_err(x.grad, r.grad) <= 1e-5, name


def test_padding_never_enters_a_state(short_chunks):
    """Huge or nan padding changes nothing at valid frames; padding outputs and
    gradients are 0."""
    lengths = torch.tensor([11, 5], device=DEVICE)
    clean = make_inputs(2, 4, 2, 16, groups=2, seed=4)
    noisy = [t.clone() for t in clean]
    for index in (0, 1, 6):  # u, delta, z
        noisy[index][1, :, 5:] = float("nan")
    for index in (3, 4):  # B, C
        noisy[index][1, :, :, 5:] = 1e30
    grad_out = torch.randn(clean[0].shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    options = dict(lengths=lengths, reverse=(False, True))
    y_clean, *grads_clean = scan_and_grads(clean, grad_out, backend="triton", **options)
    y_noisy, *grads_noisy = scan_and_grads(noisy, grad_out, backend="triton", **options)
    assert torch.equal(y_clean, y_noisy)
    assert (y_noisy[1, :, 5:] == 0).all()
    for name, a, b in zip(NAMES, grads_clean, grads_noisy):
        assert torch.equal(a, b), name
    for index in (0, 1, 6):
        assert (grads_noisy[index][1, :, 5:] == 0).all(), NAMES[index]


def test_bfloat16_inputs_keep_a_float32_state(short_chunks):
    inputs = make_inputs(2, 4, 4, 40, seed=6)
    for index in (0, 1, 3, 4, 6):
        inputs[index] = inputs[index].bfloat16()
    y = selective_scan(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7],
                       delta_softplus=True, backend="triton")
    ref = selective_scan_reference(*(t.double() for t in inputs), delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, ref) <= 1e-2  # the final rounding to bfloat16 (2^-8)


def test_zero_length_and_empty_batch():
    for batch, length in ((2, 0), (0, 5)):
        leaves = [t.requires_grad_() for t in make_inputs(batch, 3, 2, length)[:5]]
        y = selective_scan(*leaves, backend="triton")
        assert y.shape == (batch, 3, length)
        y.sum().backward()
        assert (leaves[2].grad == 0).all()


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("triton", DEVICE) == "triton"
    monkeypatch.setenv(BACKEND_ENV_VAR, "triton")
    assert resolve_backend("auto", DEVICE) == "triton"
    monkeypatch.delenv(BACKEND_ENV_VAR)
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            resolve_backend("triton", DEVICE)
    elif not scan_module.cuda_scan_available():
        assert resolve_backend("auto", DEVICE) == "triton"


def test_option_errors():
    u, delta, A, B, C, *_ = make_inputs(2, 4, 2, 6, groups=2)
    with pytest.raises(ValueError, match="reverse"):
        selective_scan(u, delta, A, B, C, reverse=(True, False, True), backend="triton")
    with pytest.raises(ValueError, match="lengths"):
        selective_scan(u, delta, A, B, C, lengths=torch.tensor([1.0, 2.0]), backend="triton")
    with pytest.raises(ValueError, match="lengths must lie"):
        selective_scan(u.cpu(), delta.cpu(), A.cpu(), B.cpu(), C.cpu(),
                       lengths=torch.tensor([7, 2]), backend="torch")
    with pytest.raises(ValueError, match="divisible"):
        selective_scan(u[:, :3], delta[:, :3], A[:3], B, C, backend="triton")


def conv_reference(x, weight, bias, silu, lengths, reverse):
    """Per channel group: reorder into reading order, zero the padding, torch's conv1d."""
    batch, channels, length = x.shape
    lengths = torch.full((batch,), length, device=x.device) if lengths is None else lengths
    index = reverse_index(lengths, length)[:, None, :]
    pad = (torch.arange(length, device=x.device)[None, :] >= lengths[:, None])[:, None, :]
    group = channels // len(reverse)
    outs = []
    for g, flag in enumerate(reverse):
        part = x[:, g * group : (g + 1) * group]
        order = (lambda v: v.gather(2, index.expand(-1, group, -1))) if flag else (lambda v: v)
        w = weight[g * group : (g + 1) * group, None]
        b = None if bias is None else bias[g * group : (g + 1) * group]
        out = F.conv1d(order(part).masked_fill(pad, 0.0), w, b, padding=weight.shape[1] - 1,
                       groups=group)[..., :length]
        outs.append(order(F.silu(out) if silu else out))
    return torch.cat(outs, dim=1).masked_fill(pad, 0.0)


@pytest.mark.parametrize("silu, with_bias, lengths, reverse", [
    (True, True, None, (False,)),
    (False, False, [13, 1, 6], (False, True)),
])
def test_causal_conv_matches_torch_conv1d(short_chunks, silu, with_bias, lengths, reverse):
    gen = torch.Generator().manual_seed(8)
    x, weight, bias, grad_out = (
        torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE)
        for shape in ((3, 6, 13), (6, 4), (6,), (3, 6, 13))
    )
    leaves = [x, weight, bias if with_bias else None]
    ours = [None if t is None else t.clone().requires_grad_() for t in leaves]
    refs = [None if t is None else t.clone().requires_grad_() for t in leaves]
    lengths = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    out = triton_causal_conv1d(*ours, silu, lengths, reverse)
    ref = conv_reference(*refs, silu, lengths, reverse)
    out.backward(grad_out)
    ref.backward(grad_out)
    assert rel_err(out, ref) <= 1e-12
    for a, r in zip(ours, refs):
        if a is not None:
            assert rel_err(a.grad, r.grad) <= 1e-12


def test_causal_conv_is_nn_conv1d_in_float32(short_chunks):
    """Against the Mamba block's own nn.Conv1d (padding K - 1, output cut to L)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3).to(DEVICE)
    x = torch.randn(2, 5, 30, device=DEVICE)
    out = triton_causal_conv1d(x.transpose(1, 2).contiguous().transpose(1, 2), conv.weight[:, 0],
                               conv.bias, silu=False)
    assert rel_err(out, conv(x)[..., :30]) <= 1e-6


def test_mamba_block_matches_torch_backend(short_chunks):
    torch.manual_seed(0)
    layer = Mamba(d_model=4, d_state=2, expand=1, backend="torch").to(DEVICE).double()
    x = torch.randn(2, 11, 4, device=DEVICE, dtype=torch.float64)
    y_torch = layer(x)
    layer.backend = "triton"
    assert rel_err(layer(x), y_torch) <= 1e-12


def test_bimamba_one_launch_matches_torch_backend(short_chunks):
    """Same weights, padded batch: output and every parameter's gradient."""
    torch.manual_seed(0)
    layer = BiMamba(d_model=4, d_state=2, expand=1, backend="torch").to(DEVICE).double()
    x = torch.randn(3, 11, 4, device=DEVICE, dtype=torch.float64) * 3
    lengths = torch.tensor([11, 1, 6], device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        layer.mamba_fwd.backend = layer.mamba_bwd.backend = backend
        layer.zero_grad()
        y = layer(x, lengths=lengths)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)).sum().backward()
        results[backend] = [y] + [p.grad.clone() for p in layer.parameters()]
    names = ["y"] + [name for name, _ in layer.named_parameters()]
    for name, ours, ref in zip(names, results["triton"], results["torch"]):
        assert rel_err(ours, ref) <= 1e-10, name


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("length", [1, 2, 31, 32, 33, 257, 2000])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_gpu_lengths_against_reference(length, dtype, tol):
    """fp32 within 1e-5; bf16 inputs (u, delta, B, C, z) compared with the float64 scan
    of the same rounded inputs: only the output's rounding and the gradients'
    accumulation order remain (2e-2)."""
    inputs = make_inputs(2, 64, 16, length, seed=length)
    for index in (0, 1, 3, 4, 6):
        inputs[index] = inputs[index].to(dtype)
    lengths = torch.tensor([length, max(1, length // 3)], device=DEVICE)
    for options in ({}, dict(lengths=lengths, reverse=True)):
        assert_matches_reference(inputs, tol, **options)


@gpu_only
@pytest.mark.gpu
@pytest.mark.skipif(not scan_module.cuda_scan_available(), reason="needs mamba_ssm's kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 100, 2048])
def test_gpu_agrees_with_mamba_ssm(dtype, length):
    inputs = make_inputs(2, 64, 16, length)
    for index in (0, 1, 3, 4, 6):
        inputs[index] = inputs[index].to(dtype)
    grad_out = torch.randn_like(inputs[0])
    ours = scan_and_grads(inputs, grad_out, backend="triton")
    theirs = scan_and_grads(inputs, grad_out, backend="cuda")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, x, r in zip(["y"] + NAMES, ours, theirs):
        if name == "A" and length == 1:
            continue  # exactly zero (h[-1] = 0) on one side, rounding noise on the other
        assert rel_err(x, r) <= tol, name


@gpu_only
@pytest.mark.gpu
def test_gpu_one_compiled_kernel_serves_every_length():
    """Lengths 370-385 (one of them a multiple of 16) compile each kernel once: Triton
    specializes integer arguments by value class, and a new class mid-epoch would stop
    training for a JIT compile."""
    from espnet_mamba.nn import triton_conv, triton_scan_kernels

    kernels = [triton_scan_kernels.scan_fwd_kernel, triton_scan_kernels.scan_bwd_kernel,
               triton_conv._conv_fwd_kernel, triton_conv._conv_bwd_kernel]

    for kernel in kernels:  # this process's compiled kernels (Triton's disk cache stays)
        kernel.device_caches.clear()
    for length in range(370, 386):
        inputs = make_inputs(2, 64, 16, length, seed=length)
        scan_and_grads(inputs, torch.randn_like(inputs[0]), backend="triton")
        x = inputs[0].clone().requires_grad_()
        weight = torch.randn(64, 4, device=DEVICE, requires_grad=True)
        triton_conv.triton_causal_conv1d(x, weight).sum().backward()
    assert [sum(len(cache[0]) for cache in k.device_caches.values()) for k in kernels] == [1, 1, 1, 1]
