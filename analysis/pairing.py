"""Pairing X with each layer: one row of X for every frame of the layer.

Layers run at X's frame rate except in upstream + downstream models whose downstream
encoder subsamples (or repeats) the upstream's frames. The pairing is decided once,
when the features are extracted (:func:`analysis.features.extract_features` stores
each distinct paired X in the cache beside the layers).
"""

from typing import List, Sequence, Tuple

import torch

__all__ = ["align_frames", "pair_with_layers"]


def align_frames(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Pair the frames of ``x`` ``(n_x, d)`` with a layer that has ``n_frames`` frames.

    - ``n_frames == n_x``: ``x`` itself.
    - ``n_frames < n_x``: r = round(n_x / n_frames) consecutive frames of X are
      concatenated: row j is ``cat(x[j*r], ..., x[j*r + r - 1])`` ``(n_frames, r*d)``
      (indices past the end repeat the last frame). Concatenation keeps all the
      information of the window, as a subsampling convolution sees it.
    - ``n_frames > n_x``: row j is ``x[floor(j * n_x / n_frames)]``.
    """
    n_x = x.shape[0]
    if n_frames == n_x:
        return x
    if n_frames > n_x:
        index = torch.arange(n_frames, device=x.device) * n_x // n_frames
        return x[index]
    ratio = max(1, round(n_x / n_frames))
    index = torch.arange(n_frames * ratio, device=x.device).clamp(max=n_x - 1)
    return x[index].reshape(n_frames, ratio * x.shape[1])


def pair_with_layers(arrays: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[int]]:
    """The X matrices that layers ``arrays[1:]`` pair with.

    Args:
        arrays: One utterance's ``[X, T_1, ..., T_N]``, each ``(n_l, d_l)``.

    Returns:
        ``extra``: the aligned copies of X for frame counts other than X's, and
        ``x_index`` ``(N,)``: for each layer, where its X is in ``arrays + extra``
        (0 for X itself).
    """
    x = arrays[0]
    extra: List[torch.Tensor] = []
    by_frames = {x.shape[0]: 0}
    x_index = []
    for layer in arrays[1:]:
        n = layer.shape[0]
        if n not in by_frames:
            by_frames[n] = len(arrays) + len(extra)
            extra.append(align_frames(x, n))
        x_index.append(by_frames[n])
    return extra, x_index
