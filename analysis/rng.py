"""Counter-based random numbers shared by the single-pair and the batched MI estimators.

Every random choice of an MI estimate (initial weights of the statistics network,
the frame order of each epoch, the marginal partners inside each mini-batch, the
permutation of the final evaluation) is a pure function of the problem's seed,
its number of frames and a counter. The numbers come from an integer hash
evaluated with ordinary int64 tensor operations, so they are the same on CPU and
GPU and the same whether a problem is trained alone or inside a stack of many:
the batched engine can therefore be checked against a plain one-pair loop.

All values are 32-bit unsigned integers stored in int64 tensors; products are
split into 16-bit halves so that no int64 operation overflows.
"""

import hashlib
from typing import Sequence, Tuple

import torch

__all__ = ["ProblemRandom", "derive_seed", "hash32"]

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF
_PAD_KEY = 1 << 62  # sort key of padding positions: after every valid key

# Stream identifiers (arbitrary distinct constants).
_STREAM_ORDER = 1  # frame order of each epoch
_STREAM_PARTNER = 2  # marginal partner inside each mini-batch
_STREAM_EVAL = 3  # permutation used by the final evaluation
_STREAM_INIT = 100  # + 2 * layer (weight) and + 2 * layer + 1 (bias)


def _mul32(x, c: int):
    """``(x * c) mod 2**32`` for ``0 <= x, c < 2**32`` without int64 overflow."""
    low = (x & _MASK16) * c
    high = (((x >> 16) * c) & _MASK16) << 16
    return (low + high) & _MASK32


def hash32(x):
    """A 32-bit integer hash (xor-shift / multiply rounds) of ints or int64 tensors.

    Args:
        x: Python int or int64 tensor with values in ``[0, 2**32)``.

    Returns:
        Same type and shape, values in ``[0, 2**32)``.
    """
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (ints, strings).

    Useful to give each utterance its own randomness that does not depend on the
    order in which utterances are processed, e.g. ``derive_seed(0, "1089-134686-0000")``.
    Stable across Python processes (unlike ``hash``).
    """
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _stream_keys(seeds: Sequence[int], stream: int, device: torch.device) -> torch.Tensor:
    """Per-problem 32-bit keys ``(K, 1)`` of one stream."""
    low = [int(s) & _MASK32 for s in seeds]
    high = [(int(s) >> 32) & _MASK32 for s in seeds]
    key = hash32(torch.tensor(low, dtype=torch.int64, device=device))
    key = hash32(key ^ torch.tensor(high, dtype=torch.int64, device=device))
    key = hash32(key ^ stream)
    return key.unsqueeze(1)


def _bits(key: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """32 random bits for each (key, counter); key ``(K, 1)``, counter ``(K, C)`` or ``(C,)``."""
    return hash32((hash32(counter ^ key) + key) & _MASK32)


class ProblemRandom:
    """Random streams of K MI problems with seeds ``seeds`` and ``lengths`` frames.

    Rows are padded to ``n_pad >= max(lengths)`` positions; position ``p`` of
    problem ``k`` is valid when ``p < lengths[k]``. Valid entries never depend on
    ``n_pad`` or on the other problems.

    Args:
        seeds: K non-negative ints.
        lengths: K frame counts (>= 1).
        n_pad: Padded row length.
        device: Where the index tensors are made.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        lengths: Sequence[int],
        n_pad: int,
        device: torch.device,
    ) -> None:
        if len(seeds) != len(lengths):
            raise ValueError(f"got {len(seeds)} seeds for {len(lengths)} problems")
        if any(int(s) < 0 for s in seeds):
            raise ValueError("seeds must be non-negative integers")
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.lengths = torch.tensor([int(n) for n in lengths], dtype=torch.int64, device=self.device)
        if len(lengths) and int(self.lengths.max()) > n_pad:
            raise ValueError(f"n_pad={n_pad} is smaller than the longest problem")
        self.n_pad = n_pad
        self.positions = torch.arange(n_pad, dtype=torch.int64, device=self.device)  # (P,)
        self.valid = self.positions[None, :] < self.lengths[:, None]  # (K, P)
        self._keys = {}

    def _key(self, stream: int) -> torch.Tensor:
        if stream not in self._keys:
            self._keys[stream] = _stream_keys(self.seeds, stream, self.device)
        return self._keys[stream]

    def init_linear(
        self, layer: int, fan_in: int, fan_out: int, dtype: torch.dtype = torch.float64
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Initial weights of one linear layer, uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in))``.

        The bound is the one of ``torch.nn.Linear``'s default initialization. Values
        are computed in float64 (once per distinct seed) and then cast to ``dtype``.

        Returns:
            weight ``(K, fan_out, fan_in)`` and bias ``(K, fan_out)``.
        """
        unique = sorted(set(self.seeds))
        position = {s: i for i, s in enumerate(unique)}
        inverse = torch.tensor([position[s] for s in self.seeds], dtype=torch.int64, device=self.device)
        bound = fan_in ** -0.5
        out = []
        for stream, size in ((_STREAM_INIT + 2 * layer, fan_out * fan_in), (_STREAM_INIT + 2 * layer + 1, fan_out)):
            counter = torch.arange(size, dtype=torch.int64, device=self.device)
            u = _bits(_stream_keys(unique, stream, self.device), counter).double() * 2.0 ** -32
            out.append(((2.0 * u - 1.0) * bound).to(dtype).index_select(0, inverse))
        return out[0].view(-1, fan_out, fan_in), out[1]

    def _sorted_positions(self, stream: int, offset: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """Valid positions sorted by (segment, random key); padding stays in place at the end."""
        counter = (offset + self.positions[None, :]) & _MASK32  # (K, P)
        key = _bits(self._key(stream), counter) + (segment << 32)
        key = torch.where(self.valid, key, torch.full_like(key, _PAD_KEY))
        return torch.sort(key, dim=1, stable=True).indices

    def epoch(self, epoch: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frame order and marginal partners of one training epoch.

        Args:
            epoch: Epoch index (>= 0).
            batch_size: Mini-batch size b; batch j holds positions ``[j*b, (j+1)*b)``.

        Returns:
            order ``(K, P)``: frame index at each position (a permutation of
            ``range(n_k)``; 0 at padding positions).
            partner ``(K, P)``: for each position, the position (in the same
            mini-batch) whose y is paired with this position's x to form a
            marginal sample; a uniformly random permutation within each batch.
            Identity at padding positions.
        """
        offset = (epoch * self.lengths)[:, None]  # (K, 1)
        zeros = torch.zeros_like(self.positions)[None, :]
        order = self._sorted_positions(_STREAM_ORDER, offset, zeros)
        order = torch.where(self.valid, order, torch.zeros_like(order))
        segment = (self.positions // batch_size)[None, :]
        partner = self._sorted_positions(_STREAM_PARTNER, offset, segment)
        return order, partner

    def eval_permutation(self) -> torch.Tensor:
        """A random permutation ``(K, P)`` of each problem's frames (0 at padding)."""
        zeros = torch.zeros((1, self.n_pad), dtype=torch.int64, device=self.device)
        perm = self._sorted_positions(_STREAM_EVAL, zeros, zeros)
        return torch.where(self.valid, perm, torch.zeros_like(perm))
