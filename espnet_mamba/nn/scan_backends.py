"""Which backend runs the selective scan: what imports, and what ``"auto"`` resolves to.

``"auto"`` picks ``"cuda"`` (mamba_ssm's fused kernel) when it is importable and the
tensors are on a CUDA device, else ``"triton"`` when Triton imports and the tensors
are on a CUDA device, else ``"torch"``. The environment variable
``MAMBA_MI_SCAN_BACKEND`` (``torch``, ``cuda``, ``triton`` or ``auto``) overrides what
``"auto"`` resolves to, so one setting forces a path for every layer that was built
with ``backend="auto"``.
"""

import importlib
import os

import torch

try:  # Optional fused CUDA kernel.
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _cuda_selective_scan_fn,
    )

    _CUDA_IMPORT_ERROR = None
except Exception as error:  # noqa: BLE001 - any failure only disables the optional path
    # Not installed, or installed without its compiled extension (ImportError), or
    # broken against this torch/triton (other errors): the torch backend remains.
    _cuda_selective_scan_fn = None
    _CUDA_IMPORT_ERROR = f"{type(error).__name__}: {error}"

__all__ = [
    "BACKEND_ENV_VAR",
    "BACKENDS",
    "cuda_scan_available",
    "resolve_backend",
    "triton_interpreter_enabled",
    "triton_module",
    "triton_scan_available",
]

BACKEND_ENV_VAR = "MAMBA_MI_SCAN_BACKEND"
BACKENDS = ("auto", "torch", "cuda", "triton")

# The Triton backend's module, imported at its first use (importing Triton takes a
# second, and TRITON_INTERPRET must be set before it): module, or the import error.
_triton_backend = {}


def cuda_scan_available() -> bool:
    """Returns whether mamba_ssm's fused selective-scan kernel imported."""
    return _cuda_selective_scan_fn is not None


def triton_module():
    """:mod:`espnet_mamba.nn.triton_scan`, or None when Triton does not import."""
    if not _triton_backend:
        try:
            _triton_backend["module"] = importlib.import_module("espnet_mamba.nn.triton_scan")
        except Exception as error:  # noqa: BLE001 - any failure only disables the path
            _triton_backend["module"] = None
            _triton_backend["error"] = f"{type(error).__name__}: {error}"
    return _triton_backend["module"]


def triton_scan_available() -> bool:
    """Returns whether Triton and the Triton selective-scan kernels import."""
    return triton_module() is not None


def triton_interpreter_enabled() -> bool:
    """Returns whether ``TRITON_INTERPRET=1`` asks Triton to interpret kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Resolves a backend name to ``"torch"``, ``"cuda"`` or ``"triton"``.

    Args:
        backend: ``"auto"``, ``"torch"``, ``"cuda"`` or ``"triton"``. ``"auto"``
            follows the environment variable ``MAMBA_MI_SCAN_BACKEND`` when it is
            set, else it picks, on a CUDA ``device``, ``"cuda"`` when mamba_ssm
            imported, else ``"triton"`` when Triton imports; else ``"torch"``.
        device: Device of the tensors to scan.

    Returns:
        ``"torch"``, ``"cuda"`` or ``"triton"``.

    Raises:
        ValueError: Unknown backend name (argument or environment variable).
        RuntimeError: ``"cuda"`` requested but mamba_ssm is missing or the tensors
            are not on a CUDA device; ``"triton"`` requested but Triton does not
            import, or the tensors are on the CPU without ``TRITON_INTERPRET=1``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV_VAR, "").strip().lower()
        if forced not in ("",) + BACKENDS:
            raise ValueError(
                f"environment variable {BACKEND_ENV_VAR} must be one of "
                f"{BACKENDS}, got {forced!r}"
            )
        backend = forced if forced else "auto"
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if cuda_scan_available():
            return "cuda"
        return "triton" if triton_scan_available() else "torch"
    if backend == "cuda":
        if not cuda_scan_available():
            raise RuntimeError(
                "selective-scan backend 'cuda' needs mamba_ssm with its compiled "
                f"CUDA extension, which could not be imported ({_CUDA_IMPORT_ERROR})"
            )
        if device.type != "cuda":
            raise RuntimeError(
                f"selective-scan backend 'cuda' needs CUDA tensors, got {device}"
            )
    if backend == "triton":
        if not triton_scan_available():
            raise RuntimeError(
                "selective-scan backend 'triton' needs Triton, which could not be "
                f"imported ({_triton_backend['error']})"
            )
        if device.type != "cuda" and not triton_interpreter_enabled():
            raise RuntimeError(
                f"selective-scan backend 'triton' needs CUDA tensors, got {device} "
                "(set TRITON_INTERPRET=1 before Triton is imported to interpret the "
                "kernels on the CPU)"
            )
    return backend
