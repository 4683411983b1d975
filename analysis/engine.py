"""Batched MI estimation: many (x_k, y_k) problems trained together as one stacked network.

The layer-wise analysis needs one MI estimate per (utterance, layer): 1000 utterances
x 12 layers = 12 000 small problems, each with its own critic. Training them one
after the other keeps a GPU idle; here they train side by side:

- The K critics are one stacked network (:mod:`analysis.stacked_critics`): a
  forward pass is a few batched matrix products, the first layer projects x and y
  once per mini-batch for the joint and the marginal rows, and one Adam over the
  stack equals K independent Adams.
- Problem k iterates its own ``epochs x ceil(n_k / batch_size)`` mini-batches over
  its own shuffled frames; a partial last batch is masked.
- All randomness comes from :mod:`analysis.rng` as a function of (seed_k, n_k), so
  problem k follows the trajectory of ``analysis.mi.estimate_mi`` on the same pair
  with the same seed (equal to floating-point tolerance), whatever else is in
  the batch and however the batch is split into chunks.
- Problems that share x (the same memory), seed and length - the layers of one
  utterance under the default seeds - form a unit that draws the same frames at
  every step; problems are processed in chunks of units bounded by
  ``max_pairs_per_chunk`` and a memory budget (:mod:`analysis.chunking`), so the
  full analysis fits a GPU or a laptop.
- The estimator's training loss and bound come from :mod:`analysis.bounds`, the same
  code as the one-pair reference's.

Precision (``precision=``, CUDA only apart from the default): "float32" keeps the
reference arithmetic; "tf32" lets float32 matrix products use TF32 tensor cores;
"bf16" stores the standardized features in bfloat16 and runs the critics under
bfloat16 autocast, with float32 master weights, Adam state and bounds.
bench/bench_mine.py measures each mode's speed and its estimates' differences to
float32 (docs/benchmarks.md, "MI engine (paper recipe)").
"""

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from analysis.bounds import make_bound
from analysis.chunking import Problem, load_chunk, memory_key, plan_chunks
from analysis.frames import ArrayLike, as_frames
from analysis.mi import MIOptions, resolve_device, resolve_options
from analysis.progress import Progress
from analysis.stacked_critics import train_and_evaluate
from analysis.stats import near_log_n

__all__ = ["BatchedMIResult", "PRECISIONS", "estimate_mi_batched"]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "tf32", "bf16")

_CPU_MEMORY_BUDGET = 2 * 1024 ** 3  # bytes per chunk on CPU unless told otherwise
_GPU_MEMORY_FRACTION = 0.6  # of the free GPU memory


@dataclass
class BatchedMIResult:
    """Per-problem results of ``estimate_mi_batched``, in input order.

    Attributes:
        estimates: ``(K,)`` float64 estimates in nats; NaN for skipped problems.
        n_frames: ``(K,)`` frames of each problem.
        log_n: ``(K,)`` natural log of n_frames, the most nats a distribution-free
            lower bound can certify from n samples (McAllester and Stratos, 2020).
        skipped: ``(K,)`` True where a problem had fewer than ``min_frames`` frames
            and ``on_short="skip"`` was given.
        seeds: ``(K,)`` the seed each problem used.
        estimator: The estimator's name.
        options: The options used.
        device: The device that trained the critics.
        seconds: Wall time of the call.
    """

    estimates: np.ndarray
    n_frames: np.ndarray
    log_n: np.ndarray
    skipped: np.ndarray
    seeds: np.ndarray
    estimator: str
    options: MIOptions
    device: str
    seconds: float

    def __len__(self) -> int:
        return len(self.estimates)

    def near_log_n(self, margin: float = 0.5) -> np.ndarray:
        """``(K,)`` True where an estimate is within ``margin`` nats of log(n) or above."""
        return near_log_n(self.estimates, self.n_frames, margin=margin)


def _collect_problems(x, y, lengths, seeds: Sequence[int]) -> List[Problem]:
    """Per-problem frame views from the pairs form or the padded form (no copies)."""
    padded = lengths is not None
    if padded:
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        if xt.dim() != 3 or yt.dim() != 3:
            raise ValueError(
                f"with lengths, x and y must be padded (K, N, d) arrays, got shapes "
                f"{tuple(xt.shape)} and {tuple(yt.shape)}"
            )
        lens = torch.as_tensor(lengths).reshape(-1).tolist()
        if not (xt.shape[0] == yt.shape[0] == len(lens)):
            raise ValueError(
                f"x, y and lengths must have the same number of problems: "
                f"{xt.shape[0]}, {yt.shape[0]}, {len(lens)}"
            )
        if xt.shape[1] != yt.shape[1]:
            raise ValueError(f"padded x and y must have the same frame axis: {xt.shape[1]} vs {yt.shape[1]}")
        for k, n in enumerate(lens):
            if not 0 <= n <= xt.shape[1]:
                raise ValueError(f"lengths[{k}]={n} is outside [0, {xt.shape[1]}]")
        xs = [xt[k, :n] for k, n in enumerate(lens)]
        ys = [yt[k, :n] for k, n in enumerate(lens)]
    else:
        if isinstance(x, (np.ndarray, torch.Tensor)) and np.ndim(x) == 3:
            raise ValueError("padded (K, N, d) inputs need lengths=")
        xs, ys = list(x), list(y)
        if len(xs) != len(ys):
            raise ValueError(f"got {len(xs)} x arrays for {len(ys)} y arrays")
    if len(seeds) != len(xs):
        raise ValueError(f"got {len(seeds)} seeds for {len(xs)} problems")
    problems = []
    for k, (xk, yk) in enumerate(zip(xs, ys)):
        # Finiteness is checked later on the device, chunk by chunk.
        xk = as_frames(xk, f"x[{k}]", check_finite=False)
        yk = as_frames(yk, f"y[{k}]", check_finite=False)
        if xk.shape[0] != yk.shape[0]:
            raise ValueError(
                f"problem {k}: x and y must have the same number of frames: {xk.shape[0]} vs {yk.shape[0]}"
            )
        problems.append(Problem(xk, yk, memory_key(xk), int(seeds[k])))
    return problems


def _check_call(on_short: str, max_pairs_per_chunk, memory_budget_bytes, precision: str, opts: MIOptions,
                device: torch.device) -> None:
    """Raises ValueError naming the first bad argument of estimate_mi_batched."""
    if on_short not in ("raise", "skip"):
        raise ValueError(f"on_short must be 'raise' or 'skip', got {on_short!r}")
    if max_pairs_per_chunk is not None and max_pairs_per_chunk < 1:
        raise ValueError(f"max_pairs_per_chunk must be >= 1, got {max_pairs_per_chunk}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "float32" and (device.type != "cuda" or opts.dtype != torch.float32):
        raise ValueError(f"precision={precision!r} needs a CUDA device and dtype torch.float32 "
                         f"(got {device.type} and {opts.dtype})")


def _default_budget(device: torch.device) -> int:
    """Bytes per chunk: a share of the free GPU memory, or a fixed amount on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(_GPU_MEMORY_FRACTION * free)
    return _CPU_MEMORY_BUDGET


@contextlib.contextmanager
def _precision(mode: str, device: torch.device):
    """Runs the block with ``mode``'s matrix-product precision (see the module docstring)."""
    if mode == "float32":
        yield
    elif mode == "bf16":
        # No cast cache: it would keep a bfloat16 copy of every step's fresh parameter leaves.
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
            yield
    else:
        matmul = torch.backends.cuda.matmul
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = old


def estimate_mi_batched(
    x: Union[Sequence[ArrayLike], ArrayLike],
    y: Union[Sequence[ArrayLike], ArrayLike],
    lengths: Optional[Union[Sequence[int], ArrayLike]] = None,
    estimator: str = "mine",
    options: Optional[MIOptions] = None,
    *,
    seeds: Optional[Sequence[int]] = None,
    on_short: str = "raise",
    max_pairs_per_chunk: Optional[int] = None,
    memory_budget_bytes: Optional[int] = None,
    progress: Optional[bool] = None,
    precision: str = "float32",
    **overrides,
) -> BatchedMIResult:
    """Estimates I(x_k; y_k) for K problems at once, each with its own fresh critic.

    Problem k gives the same estimate as ``analysis.mi.estimate_mi(x_k, y_k,
    estimator, options, seed=seeds[k])`` up to floating-point rounding.

    Args:
        x: Pairs form: a sequence of K frame matrices ``(n_k, dx)``. The same
            object may appear several times (e.g. one utterance's input features
            for each of its layers); it is then stored once per chunk.
            Padded form (with ``lengths``): ``(K, N, dx)``.
        y: Pairs form: K matrices ``(n_k, dy)``. Padded form: ``(K, N, dy)``.
        lengths: Padded form only: ``(K,)`` valid frames per problem; frames at
            and after ``lengths[k]`` are padding and never used.
        estimator: One of ``analysis.mi.ESTIMATORS``.
        options: Hyper-parameters shared by all problems (default: the paper's
            MINE recipe); ``options.device`` picks the device (default: cuda when
            available).
        seeds: ``(K,)`` non-negative seeds; default ``options.seed`` for every
            problem, which makes each estimate a function of its data alone (the
            same pair gives the same value wherever it sits). Pass distinct seeds,
            e.g. ``analysis.derive_seed(seed, utterance_id)`` per utterance, for
            independent randomness across utterances.
        on_short: What to do with problems of fewer than ``options.min_frames``
            frames: "raise" (ValueError) or "skip" (estimate NaN, ``skipped``
            True, a warning is logged).
        max_pairs_per_chunk: At most this many problems train together.
        memory_budget_bytes: Approximate memory per chunk; default 60 % of the free
            GPU memory on CUDA, 2 GiB on CPU.
        progress: True: a tqdm bar (or log lines without tqdm); False: silent;
            None: a bar on an interactive terminal, log lines otherwise.
        precision: "float32" (default), or on CUDA "tf32" or "bf16" (see the module
            docstring): faster, with estimates that follow the float32 ones less
            closely.
        **overrides: Fields of MIOptions replacing those of ``options``.

    Returns:
        BatchedMIResult with estimates, n_frames and log_n in input order.

    Raises:
        ValueError: Unknown estimator or option, mismatched shapes or frame counts,
            NaN/inf in a problem (named by index), too short problems with
            ``on_short="raise"``, or a bad ``on_short``/chunk/precision setting.

    Example:
        >>> # hidden[u]: the 13 feature matrices (T_u, D) of utterance u: the
        >>> # encoder input X followed by the outputs of its 12 layers.
        >>> xs = [h[0] for h in hidden for _ in range(12)]  # the same X object 12 times
        >>> ys = [h[layer] for h in hidden for layer in range(1, 13)]
        >>> result = estimate_mi_batched(xs, ys)  # the paper's MINE recipe
        >>> mi = result.estimates.reshape(len(hidden), 12)  # (utterances, layers)
    """
    start_time = time.perf_counter()
    opts = resolve_options(options, **overrides)
    bound = make_bound(estimator, opts)
    device = resolve_device(opts.device)
    _check_call(on_short, max_pairs_per_chunk, memory_budget_bytes, precision, opts, device)
    seeds = _seeds(seeds, opts.seed, len(lengths) if lengths is not None else len(x))
    problems = _collect_problems(x, y, lengths, seeds)
    n_frames, log_n, skipped = _frame_counts(problems, opts, on_short)
    estimates = _train_chunks(problems, skipped, estimator, bound, opts, device, precision, progress,
                              memory_budget_bytes or _default_budget(device), max_pairs_per_chunk)
    return BatchedMIResult(estimates=estimates, n_frames=n_frames, log_n=log_n, skipped=skipped,
                           seeds=np.array(seeds, dtype=np.uint64), estimator=estimator, options=opts,
                           device=str(device), seconds=time.perf_counter() - start_time)


def _seeds(seeds: Optional[Sequence[int]], default: int, n_problems: int) -> List[int]:
    """The seed of each problem: ``seeds``, or ``default`` for every one."""
    seeds = [int(s) for s in ([default] * n_problems if seeds is None else seeds)]
    if any(s < 0 for s in seeds):
        raise ValueError("seeds must be non-negative integers")
    return seeds


def _frame_counts(problems: List[Problem], opts: MIOptions, on_short: str):
    """Frames ``(K,)`` of each problem, their natural log, and ``(K,)`` True for the
    problems of fewer than ``min_frames`` (a warning; a ValueError if ``on_short`` is
    "raise")."""
    n_frames = np.array([p.x.shape[0] for p in problems], dtype=np.int64)
    skipped = n_frames < opts.min_frames
    if skipped.any():
        bad = np.flatnonzero(skipped)
        message = (f"{len(bad)} problem(s) have fewer than min_frames={opts.min_frames} frames "
                   f"(first: problem {bad[0]} with {n_frames[bad[0]]})")
        if on_short == "raise":
            raise ValueError(message)
        logger.warning("%s; their estimates are NaN", message)
    if (opts.epochs * n_frames >= 2 ** 32).any():
        raise ValueError("epochs * frames must be < 2**32 for every problem")
    with np.errstate(divide="ignore"):
        log_n = np.log(n_frames.astype(np.float64))
    return n_frames, log_n, skipped


def _train_chunks(problems: List[Problem], skipped: np.ndarray, estimator: str, bound, opts: MIOptions,
                  device: torch.device, precision: str, progress: Optional[bool], budget: int,
                  max_pairs_per_chunk: Optional[int]) -> np.ndarray:
    """Estimates ``(K,)`` of the problems not ``skipped`` (NaN for those), chunk by chunk."""
    estimates = np.full(len(problems), np.nan, dtype=np.float64)
    plan = plan_chunks(problems, np.flatnonzero(~skipped), bound.pairwise, opts, budget, max_pairs_per_chunk)
    storage = torch.bfloat16 if precision == "bf16" else opts.dtype
    desc = f"MI ({estimator}, {int((~skipped).sum())} problems)"
    with Progress(len(plan) * opts.epochs, desc, "epoch", progress) as bar, _precision(precision, device):
        for units, group in plan:
            chunk, order = load_chunk(problems, units, group, device, opts, storage)
            estimates[order] = train_and_evaluate(chunk, bound, opts, bar).double().cpu().numpy()
            del chunk
    return estimates
