"""Batched MI estimation: many (x_k, y_k) problems trained together as one stacked network.

The layer-wise analysis needs one MI estimate per (utterance, layer): 1000 utterances
x 12 layers = 12 000 small problems, each with its own critic. Training them one
after the other keeps a GPU idle; here they train side by side:

- The K critics are one grouped network whose weights are stacked along a leading
  problem axis, ``(K, fan_in, fan_out)``; a forward pass is a few ``torch.bmm`` /
  ``torch.baddbmm`` calls. The first layer is split into its x and y blocks, so the marginal pairs
  reuse the joint pairs' first-layer products (the partner permutation is applied
  after the matmul).
- One Adam over the stack equals K independent Adams (Adam is elementwise); each
  problem keeps its own step count, so bias corrections match a solo run.
- Problem k iterates its own ``epochs x ceil(n_k / batch_size)`` mini-batches over
  its own shuffled frames. Problems are sorted by length, so at every step the
  problems that still have a batch in the current epoch are a prefix of the stack:
  the step runs on that prefix only, and the others are untouched. A partial last
  batch is masked.
- All randomness comes from ``analysis._rng`` as a function of (seed_k, n_k), so
  problem k follows the trajectory of ``analysis.mi.estimate_mi`` on the same pair
  with the same seed (equal to floating-point tolerance), whatever else is in
  the batch and however the batch is split into chunks.
- Problems that share x (the same memory), seed and length - the layers of one
  utterance under the default seeds - draw the same frames at every step. They
  form a unit: its x frames are gathered once per step and multiplied by the x
  blocks of all its first layers in one wide matmul.
- Problems are processed in chunks bounded by ``max_pairs_per_chunk`` and a
  memory budget, so the full analysis fits a GPU or a laptop.

There is no Python work per problem inside the training loop.
"""

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.nn import functional as F

from analysis._rng import ProblemRandom
from analysis.mi import (
    ArrayLike,
    MIOptions,
    _CONSTANT_TOL,
    as_frames,
    check_estimator,
    resolve_device,
    resolve_options,
)
from analysis.stats import near_log_n

__all__ = ["BatchedMIResult", "estimate_mi_batched"]

logger = logging.getLogger(__name__)

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


@dataclass
class _Problem:
    x: torch.Tensor  # (n, dx), validated, on its original device/dtype
    y: torch.Tensor  # (n, dy)
    x_key: tuple  # identity of x's memory, to store shared x once
    seed: int


def _memory_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def _collect_problems(x, y, lengths, seeds: Sequence[int]) -> List[_Problem]:
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
        problems.append(_Problem(xk, yk, _memory_key(xk), int(seeds[k])))
    return problems


def _stacked_sizes(dx: int, dy: int, hidden: Tuple[int, ...]) -> List[Tuple[int, int]]:
    sizes = [dx + dy, *hidden, 1]
    return list(zip(sizes[:-1], sizes[1:]))


def _bytes_per_problem(n: int, dx: int, dy: int, estimator: str, opts: MIOptions) -> int:
    """A generous estimate of the memory one problem of n frames needs in a chunk."""
    item = torch.finfo(opts.dtype).bits // 8
    b = opts.batch_size
    n_pad = math.ceil(n / b) * b
    params = sum(i * o + o for i, o in _stacked_sizes(dx, dy, opts.hidden))
    rows = b * b if estimator == "infonce" else 2 * b
    activations = b * (dx + dy) + 4 * b * opts.hidden[0] + sum(6 * rows * h for h in opts.hidden) + 4 * rows
    features = n * (dx + dy) * 2  # bank, plus the standardization temporaries
    indices = 12 * n_pad * 8 // item  # order, partner, keys, gather indices (int64)
    return int(1.5 * item * (features + 5 * params + activations + indices))


def _chunks(needs: List[int], budget: int, max_items: Optional[int]) -> List[slice]:
    """Consecutive slices of items whose summed memory needs stay within budget."""
    out, start, used = [], 0, 0
    for k, need in enumerate(needs):
        full = max_items is not None and k - start >= max_items
        if k > start and (used + need > budget or full):
            out.append(slice(start, k))
            start, used = k, 0
        used += need
    if start < len(needs):
        out.append(slice(start, len(needs)))
    return out


class _Progress:
    """tqdm when available and wanted, else log lines about every 10 %."""

    def __init__(self, total: int, enabled: Optional[bool], desc: str) -> None:
        self.total, self.done, self.desc = total, 0, desc
        self.next_log = 0.1
        self.bar = None
        interactive = sys.stderr.isatty() if enabled is None else enabled
        self.log = enabled is not False
        if interactive:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="epoch", leave=False)
            except ImportError:
                pass
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log and self.total and self.done / self.total >= self.next_log:
            elapsed = time.perf_counter() - self.start
            logger.info("%s: %d/%d epochs (%.0f%%), %.1f s", self.desc, self.done, self.total,
                        100.0 * self.done / self.total, elapsed)
            while self.next_log <= self.done / self.total:
                self.next_log += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _standardize_bank(bank: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Z-scores each segment's columns in place; segments of ``lengths`` rows, back to back.

    Same arithmetic as ``analysis.mi.standardize_frames`` (float64 statistics,
    population std, constant columns to 0), done for all segments at once.
    """
    segments = lengths.numel()
    seg = torch.repeat_interleave(torch.arange(segments, device=bank.device), lengths)
    count = lengths.to(torch.float64).unsqueeze(1)
    d = bank.shape[1]
    block = max(1, (1 << 24) // max(d, 1))  # rows per float64 temporary
    mean = torch.zeros(segments, d, dtype=torch.float64, device=bank.device)
    for s in range(0, bank.shape[0], block):
        mean.index_add_(0, seg[s:s + block], bank[s:s + block].double())
    mean /= count
    var = torch.zeros_like(mean)
    square = torch.zeros_like(mean)
    for s in range(0, bank.shape[0], block):
        rows = bank[s:s + block].double()
        var.index_add_(0, seg[s:s + block], (rows - mean[seg[s:s + block]]).pow(2))
        square.index_add_(0, seg[s:s + block], rows.pow(2))
    std = (var / count).sqrt()
    rms = (square / count).sqrt()
    constant = std <= _CONSTANT_TOL * torch.finfo(bank.dtype).eps * rms
    scale = torch.where(constant, torch.full_like(std, math.inf), std)
    for s in range(0, bank.shape[0], block):
        idx = seg[s:s + block]
        bank[s:s + block] = ((bank[s:s + block].double() - mean[idx]) / scale[idx]).to(bank.dtype)
    return bank


def _build_bank(tensors: List[torch.Tensor], device, dtype, standardize: bool, name: str, owners: List[int]):
    """Concatenates frame matrices on ``device``; returns the bank and each one's row offset."""
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0) - lengths
    bank = torch.cat([t.to(device=device, dtype=dtype) for t in tensors], dim=0)
    finite = torch.isfinite(bank).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        segment = int(torch.searchsorted(offsets, torch.tensor(row), right=True)) - 1
        raise ValueError(f"{name}[{owners[segment]}] contains NaN or infinite values")
    lengths = lengths.to(device)
    if standardize:
        _standardize_bank(bank, lengths)
    return bank, offsets.to(device)


def _plan_chunks(problems: List[_Problem], members, estimator: str, opts: MIOptions, budget: int,
                 max_pairs: Optional[int]) -> List[Tuple[List[List[int]], int]]:
    """Splits problems into chunks of units.

    A unit is a list of problems sharing x (the same memory), seed and length, so
    they draw the same frames at every step. A chunk holds units of one size G and
    one pair of feature dimensions, sorted by decreasing length.

    Returns:
        ``[(units, G), ...]``, each unit a list of problem indices.
    """
    units: Dict[tuple, List[int]] = {}
    for k in members:
        p = problems[k]
        units.setdefault((p.y.shape[1], p.x_key, p.seed), []).append(int(k))
    by_shape: Dict[Tuple[int, int, int], List[List[int]]] = {}
    for unit in units.values():
        pieces = [unit] if max_pairs is None or len(unit) <= max_pairs else [[k] for k in unit]
        first = problems[unit[0]]
        for piece in pieces:
            by_shape.setdefault((first.x.shape[1], first.y.shape[1], len(piece)), []).append(piece)
    plan = []
    for (dx, dy, group), unit_list in by_shape.items():
        unit_list.sort(key=lambda u: (-problems[u[0]].x.shape[0], u[0]))
        needs = [group * _bytes_per_problem(problems[u[0]].x.shape[0], dx, dy, estimator, opts) for u in unit_list]
        max_units = None if max_pairs is None else max(1, max_pairs // group)
        for piece in _chunks(needs, budget, max_units):
            plan.append((unit_list[piece], group))
    return plan


def _load_chunk(problems: List[_Problem], units: List[List[int]], group: int, device: torch.device,
                opts: MIOptions) -> Tuple["_Chunk", List[int]]:
    """Moves a chunk's frames to the device (x of each distinct memory once).

    Returns:
        The chunk and its problem indices in chunk order.
    """
    order = [k for unit in units for k in unit]
    unique_x: Dict[tuple, int] = {}
    x_tensors, x_owner = [], []
    for unit in units:
        key = problems[unit[0]].x_key
        if key not in unique_x:
            unique_x[key] = len(x_tensors)
            x_tensors.append(problems[unit[0]].x)
            x_owner.append(unit[0])
    xbank, x_start = _build_bank(x_tensors, device, opts.dtype, opts.standardize, "x", x_owner)
    ybank, y_start = _build_bank([problems[k].y for k in order], device, opts.dtype, opts.standardize, "y", order)
    which = torch.tensor([unique_x[problems[unit[0]].x_key] for unit in units], device=device)
    chunk = _Chunk(
        xbank=xbank,
        ybank=ybank,
        x_offset=x_start[which],
        y_offset=y_start,
        lengths=[problems[unit[0]].x.shape[0] for unit in units],
        seeds=[problems[unit[0]].seed for unit in units],
        group=group,
    )
    return chunk, order


@contextlib.contextmanager
def _matmul_tf32(enabled: bool):
    """Allows TF32 tensor-core matmuls for float32 inside the block (CUDA only)."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = old


def _length_groups(n_batches: List[int]) -> List[Tuple[int, int]]:
    """``[start, end)`` ranges of consecutive problems with the same batches per epoch."""
    bounds, start = [], 0
    for k in range(1, len(n_batches) + 1):
        if k == len(n_batches) or n_batches[k] != n_batches[start]:
            bounds.append((start, k))
            start = k
    return bounds


def _hidden_layers(h: torch.Tensor, params: List[torch.Tensor]) -> torch.Tensor:
    """Layers after the first on ``h`` ``(K, R, H1)`` (pre-activation) -> scores ``(K, R)``."""
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1], F.relu(h), params[i])
    return h.squeeze(-1)


def _first_layer(xb, yb, w_x, w_y, bias, group: int):
    """The two parts of the first layer's pre-activation, ``(K, b, H1)`` each.

    Args:
        xb: ``(U, b, dx)`` x frames of each unit (G problems sharing x and frame order).
        yb: ``(K, b, dy)`` with ``K = U * G``.
        w_x: ``(U, dx, G * H1)``: the x blocks of the unit's G first layers side by side.
        w_y: ``(K, dy, H1)``.
        bias: ``(K, 1, H1)``, added to the x part.
        group: G.
    """
    a = torch.bmm(xb, w_x)  # (U, b, G * H1)
    if group > 1:
        units, b, _ = a.shape
        a = a.view(units, b, group, -1).transpose(1, 2).reshape(units * group, b, -1)
    return a + bias, torch.bmm(yb, w_y)


def _masked_mean(t: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, t, torch.zeros_like(t)).sum(1) / count


def _masked_log_mean_exp(t: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(t.masked_fill(~valid, -math.inf), dim=1) - count.log()


def _infonce_rows(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-row InfoNCE terms ``(K, b)`` of pair scores ``(K, b, b)``; invalid columns excluded."""
    lse = torch.logsumexp(scores.masked_fill(~valid[:, None, :], -math.inf), dim=2)
    return torch.where(valid, scores.diagonal(dim1=1, dim2=2) - lse, torch.zeros_like(lse))


def _pair_scores(a: torch.Tensor, c: torch.Tensor, rest: List[torch.Tensor]) -> torch.Tensor:
    """``S[k, i, j] = T_k(x_i, y_j)`` from first-layer parts a, c ``(K, b, H1)`` -> ``(K, b, b)``."""
    k, b, h = a.shape
    pre = (a.unsqueeze(2) + c.unsqueeze(1)).view(k, b * b, h)
    return _hidden_layers(pre, rest).view(k, b, b)


@dataclass
class _Chunk:
    """Problems that train together, on the device.

    Problems come in units of ``group`` consecutive problems that share x, seed and
    length, hence every random choice: the unit's x frames are gathered once per
    step and multiplied by the G first layers at once. Units are sorted by
    decreasing length.
    """

    xbank: torch.Tensor  # (rows, dx) x frames of the chunk's distinct x
    ybank: torch.Tensor  # (rows, dy)
    x_offset: torch.Tensor  # (U,) first bank row of each unit's x
    y_offset: torch.Tensor  # (K,) first bank row of each problem's y
    lengths: List[int]  # (U,) frames per unit
    seeds: List[int]  # (U,)
    group: int  # G


def _repeat(t: torch.Tensor, group: int) -> torch.Tensor:
    """Unit rows ``(U, ...)`` -> problem rows ``(U * G, ...)``."""
    return t if group == 1 else t.repeat_interleave(group, dim=0)


def _train_and_evaluate(chunk: _Chunk, estimator: str, opts: MIOptions, progress: _Progress) -> torch.Tensor:
    """Trains one chunk and returns the estimates ``(K,)`` in the chunk's problem order."""
    xbank, ybank, group = chunk.xbank, chunk.ybank, chunk.group
    device, dtype = xbank.device, opts.dtype
    n_units = len(chunk.lengths)
    k_total = n_units * group
    b = opts.batch_size
    dx, dy = xbank.shape[1], ybank.shape[1]
    n_batches = [math.ceil(n / b) for n in chunk.lengths]
    max_batches = n_batches[0]
    n_pad = max_batches * b
    # units_active[j]: units with a j-th batch in every epoch (a prefix: sorted lengths).
    units_active = [sum(1 for m in n_batches if m > j) for j in range(max_batches)]
    rng = ProblemRandom(chunk.seeds, chunk.lengths, n_pad, device)
    valid_k = _repeat(rng.valid, group)  # (K, P)

    # Stacked parameters [W1x, W1y, b1, W2, b2, ..., WL, bL]; W: (K, in, out) except
    # W1x: (U, dx, G * H1). A unit's problems share a seed, hence their initial weights.
    params: List[torch.Tensor] = []
    for layer, (fan_in, fan_out) in enumerate(_stacked_sizes(dx, dy, opts.hidden)):
        weight, bias = rng.init_linear(layer, fan_in, fan_out, dtype)
        weight = weight.transpose(1, 2)  # (U, in, out)
        if layer == 0:
            w_x = weight[:, :dx].repeat(1, 1, group).contiguous()  # (U, dx, G * H1)
            params += [w_x, _repeat(weight[:, dx:], group).contiguous()]
        else:
            params.append(_repeat(weight, group).contiguous())
        params.append(_repeat(bias.unsqueeze(1), group).contiguous())
    # One Adam per run of units with the same number of batches per epoch: they take
    # their steps together, so each parameter view keeps the step count (and bias
    # correction) of every problem in it; Adam is elementwise, so this equals one
    # independent Adam per problem. The views share memory with ``params``.
    optimizers = []
    for start, end in _length_groups(n_batches):
        views = [params[0][start:end]] + [p[start * group:end * group] for p in params[1:]]
        optimizer = torch.optim.Adam(views, lr=opts.lr, betas=opts.adam_betas, eps=opts.adam_eps,
                                     fused=device.type == "cuda" or None)
        optimizers.append((start, end, views, optimizer))
    steps = torch.zeros(k_total, dtype=torch.int64, device=device)  # "mine-ema" only
    log_ema = torch.zeros(k_total, dtype=dtype, device=device)
    alpha = opts.ema_alpha
    log_keep = math.log1p(-alpha) if alpha < 1 else -math.inf

    with torch.autograd.set_detect_anomaly(False):
        for epoch in range(opts.epochs):
            order, partner = rng.epoch(epoch, b)  # (U, P) each
            x_rows = order + chunk.x_offset[:, None]
            y_rows = _repeat(order, group) + chunk.y_offset[:, None]  # (K, P)
            partner = _repeat(partner, group)
            for j in range(max_batches):
                units = units_active[j]
                count = units * group
                window = slice(j * b, (j + 1) * b)
                valid = valid_k[:count, window]  # (k, b)
                n_valid = valid.sum(1).to(dtype)
                xb = xbank.index_select(0, x_rows[:units, window].reshape(-1)).view(units, b, dx)
                yb = ybank.index_select(0, y_rows[:count, window].reshape(-1)).view(count, b, dy)
                leaves = [params[0][:units].detach().requires_grad_(True)]
                leaves += [p[:count].detach().requires_grad_(True) for p in params[1:]]
                a, c = _first_layer(xb, yb, leaves[0], leaves[1], leaves[2], group)
                if estimator == "infonce":
                    rows = _infonce_rows(_pair_scores(a, c, leaves[3:]), valid)
                    loss = -(rows.sum(1) / n_valid)
                else:
                    local = (partner[:count, window] - j * b).unsqueeze(-1).expand(-1, -1, c.shape[-1])
                    c_marg = torch.gather(c, 1, local)  # y of the partner position
                    scores = _hidden_layers(torch.cat([a + c, a + c_marg], dim=1), leaves[3:])
                    t_joint, t_marg = scores[:, :b], scores[:, b:]
                    joint = _masked_mean(t_joint, valid, n_valid)
                    if estimator == "mine":
                        loss = -(joint - _masked_log_mean_exp(t_marg, valid, n_valid))
                    elif estimator == "mine-ema":
                        lme = _masked_log_mean_exp(t_marg, valid, n_valid)
                        blended = torch.logaddexp(log_ema[:count] + log_keep, lme.detach() + math.log(alpha))
                        log_ema[:count] = torch.where(steps[:count] == 0, lme.detach(), blended)
                        loss = -(joint - torch.exp(lme - log_ema[:count]))
                    elif estimator == "nwj":
                        loss = -(joint - _masked_mean(torch.exp(t_marg - 1.0), valid, n_valid))
                    else:  # smile: Jensen-Shannon training objective
                        loss = _masked_mean(F.softplus(-t_joint), valid, n_valid) + _masked_mean(
                            F.softplus(t_marg), valid, n_valid)
                grads = torch.autograd.grad(loss.sum(), leaves)
                for start, end, views, optimizer in optimizers:
                    if end > units:  # these units have no j-th batch
                        break
                    views[0].grad = grads[0][start:end]
                    for view, grad in zip(views[1:], grads[1:]):
                        view.grad = grad[start * group:end * group]
                    optimizer.step()
                    for view in views:
                        view.grad = None
                steps[:count] += 1
            progress.update(1)

        with torch.no_grad():
            return _evaluate(chunk, rng, params, estimator, opts)


def _evaluate(chunk: _Chunk, rng: ProblemRandom, params, estimator: str, opts: MIOptions) -> torch.Tensor:
    """Each problem's bound on all its frames (see ``analysis.mi``), computed in blocks of positions."""
    xbank, ybank, group = chunk.xbank, chunk.ybank, chunk.group
    b = opts.batch_size
    dx, dy = xbank.shape[1], ybank.shape[1]
    n_units, n_pad = rng.valid.shape
    k_total = n_units * group
    valid_k = _repeat(rng.valid, group)
    n_t = _repeat(rng.lengths, group).to(opts.dtype)
    perm = rng.eval_permutation()  # (U, P)
    perm_k = _repeat(perm, group)

    def gather(bank, rows, offset, n, d):
        return bank.index_select(0, (rows + offset[:, None]).reshape(-1)).view(n, b, d)

    if estimator == "infonce":
        total = torch.zeros(k_total, dtype=opts.dtype, device=xbank.device)
        for start in range(0, n_pad, b):
            window = slice(start, start + b)
            valid = valid_k[:, window]
            xb = gather(xbank, perm[:, window], chunk.x_offset, n_units, dx)
            yb = gather(ybank, perm_k[:, window], chunk.y_offset, k_total, dy)
            a, c = _first_layer(xb, yb, params[0], params[1], params[2], group)
            rows = _infonce_rows(_pair_scores(a, c, params[3:]), valid)
            size = valid.sum(1).to(opts.dtype)
            # Block bound times block size = row-term sum + size * log(size).
            total += rows.sum(1) + torch.where(size > 0, size * size.clamp_min(1).log(), torch.zeros_like(size))
        return total / n_t
    frames = torch.where(rng.valid, rng.positions[None, :], torch.zeros_like(perm))  # (U, P)
    frames_k = _repeat(frames, group)
    t_joint = torch.empty(k_total, n_pad, dtype=opts.dtype, device=xbank.device)
    t_marg = torch.empty_like(t_joint)
    for start in range(0, n_pad, b):
        window = slice(start, start + b)
        xb = gather(xbank, frames[:, window], chunk.x_offset, n_units, dx)
        yb = gather(ybank, frames_k[:, window], chunk.y_offset, k_total, dy)
        ym = gather(ybank, perm_k[:, window], chunk.y_offset, k_total, dy)
        a, c = _first_layer(xb, yb, params[0], params[1], params[2], group)
        c_marg = torch.bmm(ym, params[1])
        t_joint[:, window] = _hidden_layers(a + c, params[3:])
        t_marg[:, window] = _hidden_layers(a + c_marg, params[3:])
    joint = _masked_mean(t_joint, valid_k, n_t)
    if estimator in ("mine", "mine-ema"):
        return joint - _masked_log_mean_exp(t_marg, valid_k, n_t)
    if estimator == "nwj":
        return joint - _masked_mean(torch.exp(t_marg - 1.0), valid_k, n_t)
    if estimator == "smile":
        tau = opts.smile_clip
        return joint - _masked_log_mean_exp(t_marg.clamp(-tau, tau), valid_k, n_t)
    raise AssertionError(estimator)


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
    allow_tf32: bool = False,
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
        allow_tf32: On CUDA with float32, let matmuls use TF32 tensor cores
            (several times faster, about 1e-3 relative rounding per product; the
            estimates then match the float32 loop less closely). Off by default.
        **overrides: Fields of MIOptions replacing those of ``options``.

    Returns:
        BatchedMIResult with estimates, n_frames and log_n in input order.

    Raises:
        ValueError: Unknown estimator or option, mismatched shapes or frame counts,
            NaN/inf in a problem (named by index), too short problems with
            ``on_short="raise"``, or a bad ``on_short``/chunk setting.

    Example:
        >>> # hidden[u]: the 13 feature matrices (T_u, D) of utterance u: the
        >>> # encoder input X followed by the outputs of its 12 layers.
        >>> xs = [h[0] for h in hidden for _ in range(12)]  # the same X object 12 times
        >>> ys = [h[layer] for h in hidden for layer in range(1, 13)]
        >>> result = estimate_mi_batched(xs, ys)  # the paper's MINE recipe
        >>> mi = result.estimates.reshape(len(hidden), 12)  # (utterances, layers)
    """
    start_time = time.perf_counter()
    check_estimator(estimator)
    opts = resolve_options(options, **overrides)
    if on_short not in ("raise", "skip"):
        raise ValueError(f"on_short must be 'raise' or 'skip', got {on_short!r}")
    if max_pairs_per_chunk is not None and max_pairs_per_chunk < 1:
        raise ValueError(f"max_pairs_per_chunk must be >= 1, got {max_pairs_per_chunk}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes}")
    device = resolve_device(opts.device)
    n_problems = len(lengths) if lengths is not None else len(x)
    if seeds is None:
        seeds = [opts.seed] * n_problems
    seeds = [int(s) for s in seeds]
    if any(s < 0 for s in seeds):
        raise ValueError("seeds must be non-negative integers")
    problems = _collect_problems(x, y, lengths, seeds)

    n_frames = np.array([p.x.shape[0] for p in problems], dtype=np.int64)
    estimates = np.full(len(problems), np.nan, dtype=np.float64)
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

    if memory_budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget_bytes = int(_GPU_MEMORY_FRACTION * free)
        else:
            memory_budget_bytes = _CPU_MEMORY_BUDGET
    plan = _plan_chunks(problems, np.flatnonzero(~skipped), estimator, opts, memory_budget_bytes,
                        max_pairs_per_chunk)
    bar = _Progress(len(plan) * opts.epochs, progress, f"MI ({estimator}, {int((~skipped).sum())} problems)")
    try:
        with _matmul_tf32(allow_tf32 and device.type == "cuda"):
            for units, group in plan:
                chunk, order = _load_chunk(problems, units, group, device, opts)
                values = _train_and_evaluate(chunk, estimator, opts, bar)
                estimates[order] = values.double().cpu().numpy()
                del chunk
    finally:
        bar.close()
    with np.errstate(divide="ignore"):
        log_n = np.log(n_frames.astype(np.float64))
    return BatchedMIResult(
        estimates=estimates,
        n_frames=n_frames,
        log_n=log_n,
        skipped=skipped,
        seeds=np.array(seeds, dtype=np.uint64),
        estimator=estimator,
        options=opts,
        device=str(device),
        seconds=time.perf_counter() - start_time,
    )
