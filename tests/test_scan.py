"""Tests of the selective scan against a float64 sequential reference.

Error metric throughout: ``max |x - ref| / max |ref|`` (per tensor), with ``ref``
computed by :func:`selective_scan_reference` in float64 from the same inputs.
"""

import pytest
import torch

from espnet_mamba.nn import torch_scan
from espnet_mamba.nn.selective_scan import (
    BACKEND_ENV_VAR,
    cuda_scan_available,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)
from espnet_mamba.nn.torch_scan import _SelectiveScanCore

LENGTHS = [1, 2, 3, 31, 32, 33, 63, 64, 65, 100, 257, 1000, 2000]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| (0 when both are exactly zero)."""
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def make_inputs(batch, dim, n_state, length, regime="normal", seed=0):
    """Random scan inputs (float32). ``regime="large"`` gives huge step sizes."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=gen)
    if regime == "large":
        # softplus(delta) up to ~60 and |A| up to ~20: decays of exp(-1000) = 0,
        # and cumulative log-decays far beyond what exp() can represent.
        delta = torch.randn(batch, dim, length, generator=gen) * 20 + 5
        A = -torch.rand(dim, n_state, generator=gen) * 20 - 0.01
    else:
        delta = torch.randn(batch, dim, length, generator=gen)
        A = -torch.rand(dim, n_state, generator=gen) * 4 - 0.01
    B = torch.randn(batch, n_state, length, generator=gen)
    C = torch.randn(batch, n_state, length, generator=gen)
    D = torch.randn(dim, generator=gen)
    z = torch.randn(batch, dim, length, generator=gen)
    delta_bias = torch.randn(dim, generator=gen) * 0.5
    return u, delta, A, B, C, D, z, delta_bias


@pytest.fixture
def small_chunks(monkeypatch):
    """Forces the smallest chunk (16 frames) so that long inputs span many chunks."""
    monkeypatch.setattr(torch_scan, "_CHUNK_ELEMENTS", 1)


def test_chunk_size_is_power_of_two_in_range():
    for batch, dim, n in [(1, 1, 1), (2, 8, 4), (8, 1536, 16), (64, 4096, 64)]:
        chunk = torch_scan._chunk_size(batch, dim, n, torch.device("cpu"))
        assert 16 <= chunk <= 1024
        assert chunk & (chunk - 1) == 0


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("regime", ["normal", "large"])
@pytest.mark.parametrize("full", [False, True], ids=["plain", "D_z_bias_softplus"])
def test_forward_matches_reference(small_chunks, length, regime, full):
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 3, 4, length, regime)
    if regime == "large" or full:
        kwargs = dict(delta_softplus=True)
    else:  # plain: positive step sizes without softplus
        delta = delta.abs()
        kwargs = {}
    if full:
        kwargs.update(D=D, z=z, delta_bias=delta_bias)
    y = selective_scan(u, delta, A, B, C, backend="torch", **kwargs)
    ref = selective_scan_reference(
        *(t.double() for t in (u, delta, A, B, C)),
        **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()},
    )
    assert y.shape == u.shape and y.dtype == torch.float32
    assert torch.isfinite(ref).all()
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) <= 1e-5


@pytest.mark.parametrize("length", [5, 1000])
def test_default_chunking_matches_reference(length):
    u, delta, A, B, C, *_ = make_inputs(2, 16, 8, length)
    y = selective_scan(u, delta, A, B, C, delta_softplus=True, backend="torch")
    ref = selective_scan_reference(
        *(t.double() for t in (u, delta, A, B, C)), delta_softplus=True
    )
    assert rel_err(y, ref) <= 1e-5


def test_float64_inputs_are_exact(small_chunks):
    u, delta, A, B, C, D, z, delta_bias = (t.double() for t in make_inputs(1, 2, 3, 100))
    y = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend="torch")
    ref = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, True)
    assert y.dtype == torch.float64
    assert rel_err(y, ref) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_float32(dtype):
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 4, 4, 50)
    u, delta, B, C, z = (t.to(dtype) for t in (u, delta, B, C, z))
    y = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend="torch")
    assert y.dtype == dtype
    ref = selective_scan_reference(
        *(t.double() for t in (u, delta, A, B, C, D, z, delta_bias)), delta_softplus=True
    )
    # Only the final rounding to the half type separates the two.
    assert rel_err(y, ref) <= 1e-2


def test_zero_length():
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, 4, 0)[:5]]
    y = selective_scan(*inputs, backend="torch")
    assert y.shape == (2, 3, 0)
    y.sum().backward()
    assert torch.equal(inputs[2].grad, torch.zeros(3, 4))


@pytest.mark.parametrize("length", [1, 2, 17, 33, 100, 257])
@pytest.mark.parametrize("regime", ["normal", "large"])
def test_gradients_match_reference(small_chunks, length, regime):
    inputs = make_inputs(2, 3, 4, length, regime, seed=length)
    grad_out = torch.randn(2, 3, length, generator=torch.Generator().manual_seed(7))
    ours = [t.clone().requires_grad_() for t in inputs]
    ref = [t.double().requires_grad_() for t in inputs]
    y = selective_scan(*ours[:5], D=ours[5], z=ours[6], delta_bias=ours[7],
                       delta_softplus=True, backend="torch")
    y.backward(grad_out)
    y_ref = selective_scan_reference(*ref[:5], D=ref[5], z=ref[6], delta_bias=ref[7],
                                     delta_softplus=True)
    y_ref.backward(grad_out.double())
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    for name, x, r in zip(names, ours, ref):
        assert torch.isfinite(x.grad).all(), name
        assert rel_err(x.grad, r.grad) <= 1e-5, name


def test_core_backward_passes_gradcheck(small_chunks):
    """The hand-written backward against finite differences (float64, 3 chunks)."""
    gen = torch.Generator().manual_seed(3)
    batch, dim, n_state, length = 2, 2, 3, 40
    args = (
        torch.randn(batch, dim, length, generator=gen),
        torch.rand(batch, dim, length, generator=gen) + 0.05,
        -torch.rand(dim, n_state, generator=gen) - 0.1,
        torch.randn(batch, n_state, length, generator=gen),
        torch.randn(batch, n_state, length, generator=gen),
    )
    args = tuple(a.double().requires_grad_() for a in args)
    assert torch.autograd.gradcheck(_SelectiveScanCore.apply, args)


def test_autograd_saves_no_state_sequence(small_chunks):
    """Only the inputs and one (B, D, N) state per chunk are kept for backward."""
    batch, dim, n_state, length = 2, 8, 16, 512
    inputs = [t.requires_grad_() for t in make_inputs(batch, dim, n_state, length)[:5]]
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _SelectiveScanCore.apply(*inputs)
    input_numel = sum(t.numel() for t in inputs)
    n_chunks = -(-length // 16)
    assert sum(saved) <= input_numel + n_chunks * batch * dim * n_state
    assert sum(saved) < batch * dim * length * n_state // 2  # half of one state sequence


def test_shape_errors():
    u, delta, A, B, C, D, z, delta_bias = make_inputs(2, 3, 4, 10)
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, delta[:, :, :5], A, B, C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :, :5], C)
    with pytest.raises(ValueError, match="C must be"):
        selective_scan(u, delta, A, B, C[:1])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(u, delta, A, B, C, D=D[:2])
    with pytest.raises(ValueError, match="z must"):
        selective_scan(u, delta, A, B, C, z=z[:1])
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(u[0], delta, A, B, C)


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("tpu", cpu)
    u, delta, A, B, C, *_ = make_inputs(1, 2, 2, 4)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(u, delta, A, B, C, backend="fast")
    with pytest.raises(RuntimeError, match="cuda"):
        resolve_backend("cuda", cpu)  # CPU tensors (and maybe no mamba_ssm)
    monkeypatch.setenv(BACKEND_ENV_VAR, "torch")
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    monkeypatch.setenv(BACKEND_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=BACKEND_ENV_VAR):
        resolve_backend("auto", cpu)
    # An explicit backend ignores the environment variable.
    assert resolve_backend("torch", cpu) == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and cuda_scan_available()),
    reason="needs CUDA and mamba_ssm",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 100, 2048])
def test_torch_and_cuda_backends_agree(dtype, length):
    inputs = [t.cuda() for t in make_inputs(2, 64, 16, length)]
    u, delta, A, B, C, D, z, delta_bias = inputs
    u, delta, B, C, z = (t.to(dtype) for t in (u, delta, B, C, z))
    grad_out = torch.randn_like(u)
    results = {}
    for backend in ("torch", "cuda"):
        leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
        y = selective_scan(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                           delta_softplus=True, backend=backend)
        y.backward(grad_out)
        results[backend] = [y] + [t.grad for t in leaves]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    names = ["y", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    for name, ours, theirs in zip(names, results["torch"], results["cuda"]):
        if name == "A" and length == 1:
            # Exactly zero (h[-1] = 0); the kernel returns rounding noise (~1e-9).
            assert ours.abs().max() == 0 and theirs.abs().max() < 1e-6
            continue
        assert rel_err(ours, theirs) <= tol, name
