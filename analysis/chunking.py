"""How the batched engine groups MI problems: units, chunks within a memory budget, device banks.

A *unit* is a list of problems that share x (the same memory), seed and length, so
they draw the same frames at every step (the layers of one utterance under the default
seeds). A *chunk* holds units of one size G and one pair of feature dimensions, sorted
by decreasing length, small enough for the memory budget; its frames are moved to the
device as two banks (x of each distinct memory once, y of every problem).
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from analysis.frames import standardize_segments

__all__ = ["Chunk", "Problem", "load_chunk", "memory_key", "plan_chunks", "repeat_units", "stacked_sizes"]


@dataclass
class Problem:
    """One (x, y) pair as given by the caller."""

    x: torch.Tensor  # (n, dx), validated, on its original device/dtype
    y: torch.Tensor  # (n, dy)
    x_key: tuple  # identity of x's memory, to store shared x once
    seed: int


@dataclass
class Chunk:
    """Problems that train together, on the device.

    Problems come in units of ``group`` consecutive problems that share x, seed and
    length, hence every random choice. Units are sorted by decreasing length.
    """

    xbank: torch.Tensor  # (rows, dx) x frames of the chunk's distinct x
    ybank: torch.Tensor  # (rows, dy)
    x_offset: torch.Tensor  # (U,) first bank row of each unit's x
    y_offset: torch.Tensor  # (K,) first bank row of each problem's y
    lengths: List[int]  # (U,) frames per unit
    seeds: List[int]  # (U,)
    group: int  # G


def memory_key(t: torch.Tensor) -> tuple:
    """What identifies a tensor's memory: problems whose x has the same key share it."""
    return (t.device.type, t.device.index, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def repeat_units(t: torch.Tensor, group: int) -> torch.Tensor:
    """Unit rows ``(U, ...)`` -> problem rows ``(U * G, ...)``."""
    return t if group == 1 else t.repeat_interleave(group, dim=0)


def stacked_sizes(dx: int, dy: int, hidden: Tuple[int, ...]) -> List[Tuple[int, int]]:
    """``(fan_in, fan_out)`` of each layer of a critic on ``cat(x, y)``."""
    sizes = [dx + dy, *hidden, 1]
    return list(zip(sizes[:-1], sizes[1:]))


def _bytes_per_problem(n: int, dx: int, dy: int, pairwise: bool, opts) -> int:
    """A generous estimate of the memory one problem of n frames needs in a chunk."""
    item = torch.finfo(opts.dtype).bits // 8
    b = opts.batch_size
    n_pad = math.ceil(n / b) * b
    params = sum(i * o + o for i, o in stacked_sizes(dx, dy, opts.hidden))
    rows = b * b if pairwise else 2 * b
    activations = b * (dx + dy) + 4 * b * opts.hidden[0] + sum(6 * rows * h for h in opts.hidden) + 4 * rows
    features = n * (dx + dy) * 2  # bank, plus the standardization temporaries
    indices = 12 * n_pad * 8 // item  # order, partner, keys, gather indices (int64)
    return int(1.5 * item * (features + 5 * params + activations + indices))


def _slices_within(needs: List[int], budget: int, max_items: Optional[int]) -> List[slice]:
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


def plan_chunks(problems: List[Problem], members, pairwise: bool, opts, budget: int,
                max_pairs: Optional[int]) -> List[Tuple[List[List[int]], int]]:
    """Splits the problems ``members`` into chunks of units.

    Args:
        problems: All problems of the call.
        members: Indices of the problems to plan (the others are skipped).
        pairwise: The estimator scores all pairs of a batch (InfoNCE): more memory.
        opts: An :class:`analysis.mi.MIOptions`.
        budget: Approximate bytes per chunk.
        max_pairs: At most this many problems per chunk (None: no limit).

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
        needs = [group * _bytes_per_problem(problems[u[0]].x.shape[0], dx, dy, pairwise, opts) for u in unit_list]
        max_units = None if max_pairs is None else max(1, max_pairs // group)
        for piece in _slices_within(needs, budget, max_units):
            plan.append((unit_list[piece], group))
    return plan


def _build_bank(tensors: List[torch.Tensor], device, opts, storage: torch.dtype, name: str, owners: List[int]):
    """Concatenates frame matrices on ``device`` (standardized in ``opts.dtype`` if asked,
    stored as ``storage``); returns the bank and each one's row offset.

    Raises:
        ValueError: A matrix holds NaN or inf (named ``name[owner]``).
    """
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0) - lengths
    bank = torch.cat([t.to(device=device, dtype=opts.dtype) for t in tensors], dim=0)
    finite = torch.isfinite(bank).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        segment = int(torch.searchsorted(offsets, torch.tensor(row), right=True)) - 1
        raise ValueError(f"{name}[{owners[segment]}] contains NaN or infinite values")
    if opts.standardize:
        standardize_segments(bank, lengths.to(device))
    return bank.to(storage), offsets.to(device)


def load_chunk(problems: List[Problem], units: List[List[int]], group: int, device: torch.device, opts,
               storage: torch.dtype) -> Tuple[Chunk, List[int]]:
    """Moves a chunk's frames to the device (x of each distinct memory once), as ``storage``.

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
    xbank, x_start = _build_bank(x_tensors, device, opts, storage, "x", x_owner)
    ybank, y_start = _build_bank([problems[k].y for k in order], device, opts, storage, "y", order)
    which = torch.tensor([unique_x[problems[unit[0]].x_key] for unit in units], device=device)
    chunk = Chunk(
        xbank=xbank,
        ybank=ybank,
        x_offset=x_start[which],
        y_offset=y_start,
        lengths=[problems[unit[0]].x.shape[0] for unit in units],
        seeds=[problems[unit[0]].seed for unit in units],
        group=group,
    )
    return chunk, order
