"""K statistics networks trained side by side as one stacked network (the batched engine's core).

The K critics of a chunk (:class:`analysis.chunking.Chunk`) are one grouped MLP whose
weights are stacked along a leading problem axis, ``(K, fan_in, fan_out)``; a forward
pass is a few ``torch.bmm`` / ``torch.baddbmm`` calls.

The first layer is ``W_x x + W_y y + b``. A joint row pairs x_i with y_i, a marginal
row pairs x_i with y_pi(i), so both are built from one projection of each: per
mini-batch, X and Y are projected once (``a = X W_x + b``, ``c = Y W_y``), the joint
pre-activation is ``a + c`` and the marginal one ``a + c[pi]``. Backward, autograd
sums the two rows' gradients before the weight products, ``grad W_x = X^T (d_joint +
d_marg)`` and ``grad W_y = Y^T (d_joint + P^T d_marg)``: half the first-layer FLOPs
of projecting ``cat(x, y)`` for both rows.

The G problems of a unit (the layers of one utterance) share x and every random
choice, so their x frames are gathered once per step and multiplied by the G x
blocks side by side, ``(U, dx, G * H1)``, in one wide product.

One Adam over the stack equals K independent Adams (Adam is elementwise); problems
with the same number of batches per epoch step together under one optimizer, so each
keeps its own step count and bias correction. Problems are sorted by length, so the
problems with a j-th batch in an epoch are a prefix of the stack: step j runs on that
prefix only. A partial last batch is masked. The training loop makes no host-device
synchronisation and no Python work per problem.
"""

import math
from typing import List, Tuple

import torch
from torch.nn import functional as F

from analysis.bounds import Bound
from analysis.chunking import Chunk, repeat_units, stacked_sizes
from analysis.progress import Progress
from analysis.rng import ProblemRandom

__all__ = ["StackedCritics", "evaluate", "prepare_training", "train_and_evaluate", "train_epoch"]


def _length_groups(n_batches: List[int]) -> List[Tuple[int, int]]:
    """``[start, end)`` ranges of consecutive units with the same batches per epoch."""
    bounds, start = [], 0
    for k in range(1, len(n_batches) + 1):
        if k == len(n_batches) or n_batches[k] != n_batches[start]:
            bounds.append((start, k))
            start = k
    return bounds


class StackedCritics:
    """The stacked parameters of a chunk's critics, their Adam optimizers and batch schedule.

    ``params`` is ``[W1x, W1y, b1, W2, b2, ..., WL, bL]``: W1x ``(U, dx, G * H1)``, the
    x blocks of a unit's G first layers side by side; every other W ``(K, in, out)``
    and b ``(K, 1, out)``. A unit's problems share a seed, hence their initial weights.

    Args:
        rng: The chunk's random streams (one per unit).
        dx, dy: Feature dimensions.
        group: G, problems per unit.
        n_batches: Batches per epoch of each unit (non-increasing).
        opts: An :class:`analysis.mi.MIOptions`.
    """

    def __init__(self, rng: ProblemRandom, dx: int, dy: int, group: int, n_batches: List[int], opts) -> None:
        self.group = group
        # units_active[j]: units with a j-th batch in every epoch (a prefix: sorted lengths)
        self.units_active = [sum(1 for m in n_batches if m > j) for j in range(n_batches[0])]
        self.valid = repeat_units(rng.valid, group)  # (K, P) real positions of each problem
        self.params: List[torch.Tensor] = []
        for layer, (fan_in, fan_out) in enumerate(stacked_sizes(dx, dy, opts.hidden)):
            weight, bias = rng.init_linear(layer, fan_in, fan_out, opts.dtype)
            weight = weight.transpose(1, 2)  # (U, in, out)
            if layer == 0:
                w_x = weight[:, :dx].repeat(1, 1, group).contiguous()  # (U, dx, G * H1)
                self.params += [w_x, repeat_units(weight[:, dx:], group).contiguous()]
            else:
                self.params.append(repeat_units(weight, group).contiguous())
            self.params.append(repeat_units(bias.unsqueeze(1), group).contiguous())
        fused = rng.device.type == "cuda" or None
        self.optimizers = []  # (first unit, end unit, parameter views, Adam); views share memory with params
        for start, end in _length_groups(n_batches):
            views = [self.params[0][start:end]] + [p[start * group:end * group] for p in self.params[1:]]
            adam = torch.optim.Adam(views, lr=opts.lr, betas=opts.adam_betas, eps=opts.adam_eps, fused=fused)
            self.optimizers.append((start, end, views, adam))

    def leaves(self, units: int) -> List[torch.Tensor]:
        """Parameters of the first ``units`` units as fresh autograd leaves (shared memory)."""
        count = units * self.group
        return [self.params[0][:units].detach().requires_grad_(True)] + [
            p[:count].detach().requires_grad_(True) for p in self.params[1:]]

    def step(self, grads: List[torch.Tensor], units: int) -> None:
        """One Adam step of the first ``units`` units with ``grads`` of :meth:`leaves`."""
        g = self.group
        for start, end, views, adam in self.optimizers:
            if end > units:  # these units have no batch in this step
                break
            views[0].grad = grads[0][start:end]
            for view, grad in zip(views[1:], grads[1:]):
                view.grad = grad[start * g:end * g]
            adam.step()
            for view in views:
                view.grad = None


def _hidden_layers(h: torch.Tensor, params: List[torch.Tensor]) -> torch.Tensor:
    """Layers after the first on ``h`` ``(K, R, H1)`` (pre-activation) -> scores ``(K, R)``."""
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1], F.relu(h), params[i])
    return h.squeeze(-1)


def _first_layer(xb, yb, w_x, w_y, bias, group: int):
    """The x and y parts of the first layer's pre-activation, ``(K, b, H1)`` each.

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
    return a + bias.to(a.dtype), torch.bmm(yb, w_y)


def _pair_scores(a: torch.Tensor, c: torch.Tensor, rest: List[torch.Tensor]) -> torch.Tensor:
    """``S[k, i, j] = T_k(x_i, y_j)`` from first-layer parts a, c ``(K, b, H1)`` -> ``(K, b, b)``."""
    k, b, h = a.shape
    pre = (a.unsqueeze(2) + c.unsqueeze(1)).reshape(k, b * b, h)  # a may be strided (one unit)
    return _hidden_layers(pre, rest).view(k, b, b)


def _take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out[k, i] = t[k, rows[k, i]]`` for ``t`` ``(K, b, h)`` and ``rows`` ``(K, b)``."""
    k, b, h = t.shape
    flat = rows + (torch.arange(k, device=t.device) * b)[:, None]
    return t.reshape(k * b, h).index_select(0, flat.reshape(-1)).view(k, b, h)


class _PermuteRows(torch.autograd.Function):
    """Rows of each problem's batch in the order of a permutation ``(K, b)``.

    The gradient is gathered with the inverse permutation: every row has exactly one
    source, so no index_add (atomic adds) is needed.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, permutation: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return _take_rows(t, permutation)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return _take_rows(grad.contiguous(), inverse), None, None


def _joint_and_marginal(a: torch.Tensor, c: torch.Tensor, partner: torch.Tensor, rest: List[torch.Tensor]):
    """Scores ``(K, b)`` of the joint rows ``a + c`` and the marginal rows ``a + c[partner]``.

    ``partner`` ``(K, b)`` holds, for each row, the row of the batch whose y it is paired
    with: a permutation of the batch's rows (:meth:`analysis.rng.ProblemRandom.epoch`).
    """
    k, b, h = c.shape
    inverse = torch.empty_like(partner).scatter_(1, partner, torch.arange(b, device=c.device).expand(k, b))
    both = torch.stack([c, _PermuteRows.apply(c, partner, inverse)], dim=1)  # (K, 2, b, H1), joint rows first
    scores = _hidden_layers((both + a.unsqueeze(1)).reshape(k, 2 * b, h), rest)
    return scores[:, :b], scores[:, b:]


def _scores(bound: Bound, a, c, partner, rest, dtype: torch.dtype):
    """The critics' scores in the form ``bound`` takes, in the master ``dtype``."""
    if bound.pairwise:
        return (_pair_scores(a, c, rest).to(dtype),)
    return tuple(s.to(dtype) for s in _joint_and_marginal(a, c, partner, rest))


def train_and_evaluate(chunk: Chunk, bound: Bound, opts, progress: Progress) -> torch.Tensor:
    """Trains the chunk's critics for ``opts.epochs`` epochs; returns the estimates ``(K,)``
    in the chunk's problem order."""
    rng, critics = prepare_training(chunk, opts)
    state = bound.initial_state(len(chunk.lengths) * chunk.group, opts.dtype, rng.device)
    with torch.autograd.set_detect_anomaly(False):
        for epoch in range(opts.epochs):
            state = train_epoch(chunk, rng, critics, bound, state, epoch, opts)
            progress.update(1)
        with torch.no_grad():
            return evaluate(chunk, rng, critics.params, bound, opts)


def prepare_training(chunk: Chunk, opts) -> Tuple[ProblemRandom, StackedCritics]:
    """The chunk's random streams and freshly initialized critics."""
    b = opts.batch_size
    n_batches = [math.ceil(n / b) for n in chunk.lengths]
    rng = ProblemRandom(chunk.seeds, chunk.lengths, n_batches[0] * b, chunk.xbank.device)
    critics = StackedCritics(rng, chunk.xbank.shape[1], chunk.ybank.shape[1], chunk.group, n_batches, opts)
    return rng, critics


def train_epoch(chunk: Chunk, rng: ProblemRandom, critics: StackedCritics, bound: Bound, state, epoch: int, opts):
    """One epoch of every problem's mini-batches; returns the bound's state after it."""
    group, b, dtype = chunk.group, opts.batch_size, opts.dtype
    dx, dy = chunk.xbank.shape[1], chunk.ybank.shape[1]
    order, partner = rng.epoch(epoch, b)  # (U, P) each
    x_rows = order + chunk.x_offset[:, None]
    y_rows = repeat_units(order, group) + chunk.y_offset[:, None]  # (K, P)
    partner = repeat_units(partner, group)
    for j, units in enumerate(critics.units_active):
        count = units * group
        window = slice(j * b, (j + 1) * b)
        valid = critics.valid[:count, window]  # (k, b)
        n_valid = valid.sum(1).to(dtype)
        xb = chunk.xbank.index_select(0, x_rows[:units, window].reshape(-1)).view(units, b, dx)
        yb = chunk.ybank.index_select(0, y_rows[:count, window].reshape(-1)).view(count, b, dy)
        leaves = critics.leaves(units)
        a, c = _first_layer(xb, yb, leaves[0], leaves[1], leaves[2], group)
        scores = _scores(bound, a, c, partner[:count, window] - j * b, leaves[3:], dtype)
        step_state = None if state is None else tuple(s[:count] for s in state)
        loss, step_state = bound.loss(*scores, valid, n_valid, step_state)
        critics.step(torch.autograd.grad(loss.sum(), leaves), units)
        if state is not None:
            for whole, part in zip(state, step_state):
                whole[:count] = part
    return state


def evaluate(chunk: Chunk, rng: ProblemRandom, params, bound: Bound, opts) -> torch.Tensor:
    """Each problem's bound on all its frames (see :mod:`analysis.mi`), in blocks of positions."""
    xbank, ybank, group = chunk.xbank, chunk.ybank, chunk.group
    b, dtype = opts.batch_size, opts.dtype
    dx, dy = xbank.shape[1], ybank.shape[1]
    n_units, n_pad = rng.valid.shape
    k_total = n_units * group
    valid_k = repeat_units(rng.valid, group)
    n_t = repeat_units(rng.lengths, group).to(dtype)
    perm = rng.eval_permutation()  # (U, P)
    perm_k = repeat_units(perm, group)

    def gather(bank, rows, offset, n, d):
        return bank.index_select(0, (rows + offset[:, None]).reshape(-1)).view(n, b, d)

    if bound.pairwise:
        total = torch.zeros(k_total, dtype=dtype, device=xbank.device)
        for start in range(0, n_pad, b):
            window = slice(start, start + b)
            valid = valid_k[:, window]
            xb = gather(xbank, perm[:, window], chunk.x_offset, n_units, dx)
            yb = gather(ybank, perm_k[:, window], chunk.y_offset, k_total, dy)
            a, c = _first_layer(xb, yb, params[0], params[1], params[2], group)
            (scores,) = _scores(bound, a, c, None, params[3:], dtype)
            total += bound.block_sum(scores, valid, valid.sum(1).to(dtype))
        return total / n_t
    frames = torch.where(rng.valid, rng.positions[None, :], torch.zeros_like(perm))  # (U, P)
    frames_k = repeat_units(frames, group)
    t_joint = torch.empty(k_total, n_pad, dtype=dtype, device=xbank.device)
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
    return bound.value(t_joint, t_marg, valid_k, n_t)
