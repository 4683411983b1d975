"""Mamba-1 block, parameter-compatible with ``mamba_ssm.modules.mamba_simple.Mamba``.

The state-dict keys and shapes are those of mamba_ssm's module (``in_proj``,
``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so weights move
between the two. The selective scan runs on the backend that
:func:`espnet_mamba.nn.selective_scan.resolve_backend` picks: mamba_ssm's CUDA kernel,
the Triton kernels (which also run the causal convolution, so that no compiled
extension is needed) or the pure-PyTorch scan.
"""

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mamba.io import check_int
from espnet_mamba.nn.selective_scan import BACKENDS, resolve_backend, selective_scan

try:  # Optional fused causal depthwise convolution (CUDA only).
    from causal_conv1d import causal_conv1d_fn
except Exception:  # noqa: BLE001 - missing or broken: F.conv1d is used instead
    causal_conv1d_fn = None

__all__ = ["Mamba"]


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Upcasts half-precision tensors to float32; float32 and float64 pass as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _channel_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight @ x[b]`` for every batch item: ``(O, I)``, ``(B, I, L)`` -> ``(B, O, L)``.

    One batched matmul that reads ``x`` in place (any layout with a unit stride) and
    writes a contiguous result, so that slices along O keep a unit time stride.
    """
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


def _check_options(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
                   dt_init_floor, backend) -> None:
    """Raises ValueError naming the first bad argument of :class:`Mamba`."""
    check_int("d_model", d_model)
    check_int("d_state", d_state)
    check_int("d_conv", d_conv)
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or expand <= 0:
        raise ValueError(f"expand must be a positive number, got {expand!r}")
    if int(expand * d_model) < 1:
        raise ValueError(
            f"expand * d_model must be at least 1, got {expand} * {d_model}"
        )
    if dt_rank != "auto":
        check_int("dt_rank", dt_rank)
    if not 0 < dt_min <= dt_max:
        raise ValueError(
            f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, "
            f"got dt_min={dt_min}, dt_max={dt_max}"
        )
    if dt_init not in ("random", "constant"):
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
    if not dt_scale > 0:
        raise ValueError(f"dt_scale must be positive, got {dt_scale!r}")
    if not dt_init_floor >= 0:
        raise ValueError(f"dt_init_floor must be >= 0, got {dt_init_floor!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _init_dt_proj(dt_proj: nn.Linear, dt_init: str, dt_scale: float, dt_min: float, dt_max: float,
                  dt_init_floor: float) -> None:
    """Initializes the step-size projection ``(d_inner, dt_rank)`` and its bias in place."""
    # dt_proj.weight: variance-preserving scale for a rank-dt_rank projection.
    dt_init_std = dt_proj.in_features ** -0.5 * dt_scale
    with torch.no_grad():
        if dt_init == "constant":
            dt_proj.weight.fill_(dt_init_std)
        else:
            dt_proj.weight.uniform_(-dt_init_std, dt_init_std)
        # dt_proj.bias: softplus(bias) is log-uniform in [dt_min, dt_max].
        log_dt = torch.empty(dt_proj.out_features, device=dt_proj.weight.device).uniform_(
            math.log(dt_min), math.log(dt_max)
        )
        dt = log_dt.exp().clamp(min=dt_init_floor)
        # Inverse softplus: x = dt + log(1 - exp(-dt)).
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class Mamba(nn.Module):
    """Mamba-1 selective state-space block (causal in time).

    ``x -> in_proj -> (x, z)``; ``x -> causal depthwise conv -> SiLU``; ``x`` gives
    the input-dependent step size ``dt`` (through a rank-``dt_rank`` projection),
    ``B`` and ``C``; the selective scan mixes time; the output gated by ``SiLU(z)``
    goes through ``out_proj``.

    Args:
        d_model: Input and output feature size.
        d_state: State size N per channel.
        d_conv: Kernel size of the causal depthwise convolution.
        expand: Inner size is ``int(expand * d_model)``.
        dt_rank: Rank of the step-size projection, or ``"auto"`` for
            ``ceil(d_model / 16)``.
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        dt_init: Initialization of ``dt_proj.weight``: ``"random"`` (uniform) or
            ``"constant"``.
        dt_scale: Scale of the ``dt_proj.weight`` initialization.
        dt_init_floor: Lower clamp of the initial step sizes.
        conv_bias: Bias in the depthwise convolution.
        bias: Bias in ``in_proj`` and ``out_proj``.
        backend: Selective-scan backend: ``"auto"``, ``"torch"``, ``"cuda"`` or
            ``"triton"``.
        device: Device of the parameters.
        dtype: Dtype of the parameters (``A_log`` and ``D`` stay float32).

    Example:
        >>> layer = Mamba(d_model=64)
        >>> layer(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: Union[int, float] = 2,
        dt_rank: Union[int, str] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        _check_options(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
                       dt_init_floor, backend)
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.backend = backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        # Depthwise; padding d_conv - 1 on both sides, the output is cut to the
        # first L frames, which makes the convolution causal.
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.x_proj = nn.Linear(
            self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory
        )
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        _init_dt_proj(self.dt_proj, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialization: A[d, n] = -(n + 1); kept as log(-A) in float32.
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(a_init).repeat(self.d_inner, 1))
        self.A_log._no_weight_decay = True
        # Skip connection y += D * x.
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block.

        Args:
            x: ``(B, L, d_model)``.

        Returns:
            ``(B, L, d_model)``. Frame ``t`` depends only on frames ``0..t``.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba expects input (B, L, {self.d_model}), got {tuple(x.shape)}"
            )
        batch, length, _ = x.shape
        backend = resolve_backend(self.backend, x.device)
        # Channel-major layout, as in mamba_ssm: xz is one (2 * d_inner, B * L) matrix
        # product, seen as (B, 2 * d_inner, L) with unit time stride. z and the scan
        # output (the kernel allocates it like z) then need no copies, and out_proj
        # reads the output in place.
        x_rows = x.reshape(batch * length, self.d_model)
        if self.in_proj.bias is None:
            xz = torch.mm(self.in_proj.weight, x_rows.t())
        else:
            xz = torch.addmm(self.in_proj.bias.unsqueeze(1), self.in_proj.weight, x_rows.t())
        xz = xz.view(2 * self.d_inner, batch, length).permute(1, 0, 2)
        x_in, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each

        if backend == "cuda" and causal_conv1d_fn is not None:
            x_in = causal_conv1d_fn(
                x_in, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu"
            )
        elif backend == "triton":
            from espnet_mamba.nn.triton_conv import triton_causal_conv1d  # imports Triton

            x_in = triton_causal_conv1d(x_in, self.conv1d.weight[:, 0], self.conv1d.bias)
        else:
            x_in = F.silu(self.conv1d(x_in)[..., :length])

        # dt, B and C as (B, features, L) slices of one batched product: no
        # transposes, unit time stride as the scan kernel wants.
        x_dbl = _channel_matmul(self.x_proj.weight, x_in)  # (B, dt_rank + 2 * d_state, L)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = _channel_matmul(self.dt_proj.weight, dt)  # (B, d_inner, L); bias in the scan
        A = -torch.exp(_at_least_float32(self.A_log))  # (d_inner, d_state)
        y = selective_scan(
            x_in,
            dt,
            A,
            B,
            C,
            D=_at_least_float32(self.D),
            z=z,
            delta_bias=_at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
            backend=backend,
        )  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2))
