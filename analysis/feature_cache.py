"""The feature cache: all layer features of one model in one file.

Layout: a fixed 64-byte header (magic, footer offset), the arrays back to back (float16
unless a value does not fit, then float32) and a JSON footer with, per utterance, its
arrays (offset, dtype, shape) and which X array each layer is paired with
(:mod:`analysis.pairing`), plus the caller's metadata (identity, layer names ...).
A cache is written under a temporary name and renamed when complete
(:func:`feature_writer`), so a cache that opens is whole.
"""

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator, List, Sequence, Tuple

import numpy as np

from espnet_mamba.io import atomic_write

__all__ = ["FeatureStore", "FeatureWriter", "feature_writer", "file_digest"]

_MAGIC = b"MAMBAMI\x01"
_HEADER_BYTES = 64
_FORMAT = 2  # footer version; 2: X paired with each layer
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def file_digest(path, chunk: int = 1 << 22) -> str:
    """BLAKE2b (128-bit) of a file's bytes, hex."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureWriter:
    """Streams one model's features into an open binary file (see :func:`feature_writer`).

    Args:
        file: A new, seekable binary file.
        dtype: "float16" (default; arrays with values beyond float16's range are
            kept as float32) or "float32".
    """

    def __init__(self, file: BinaryIO, dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.file = file
        self.dtype = dtype
        self.file.write(_MAGIC + struct.pack("<Q", 0) + b"\0" * (_HEADER_BYTES - 16))
        self.utts: List[dict] = []
        self.finished = False

    def _write(self, array: np.ndarray) -> list:
        array = np.asarray(array)
        store = self.dtype
        if store == "float16" and array.size and float(np.abs(array).max()) > _FLOAT16_MAX:
            store = "float32"
        data = np.ascontiguousarray(array, dtype=store)
        offset = self.file.tell()
        self.file.write(data.tobytes())
        return [offset, store, list(data.shape)]

    def add(self, utt_id: str, arrays: Sequence[np.ndarray], extra: Sequence[np.ndarray] = (),
            x_index: Sequence[int] = ()) -> None:
        """Append one utterance.

        Args:
            utt_id: Its id.
            arrays: ``[X, T_1, ..., T_N]``, each ``(n_l, d_l)``.
            extra: Further X matrices paired with some layers (aligned copies).
            x_index: ``(N,)`` array index (into ``arrays + extra``) of each layer's X;
                empty: X itself for every layer.
        """
        x_index = list(x_index) or [0] * (len(arrays) - 1)
        if len(x_index) != len(arrays) - 1 or not all(0 <= i < len(arrays) + len(extra) for i in x_index):
            raise ValueError(f"utterance {utt_id}: x_index {x_index} does not fit {len(arrays)} arrays "
                             f"and {len(extra)} extra")
        entries = [self._write(a) for a in list(arrays) + list(extra)]
        self.utts.append({"id": utt_id, "arrays": entries, "x_index": [int(i) for i in x_index]})

    def finish(self, meta: dict) -> None:
        """Write the footer with ``meta`` and point the header at it."""
        footer = json.dumps({"version": _FORMAT, "meta": meta, "utts": self.utts}).encode("utf-8")
        offset = self.file.tell()
        self.file.write(footer)
        self.file.seek(len(_MAGIC))
        self.file.write(struct.pack("<Q", offset))
        self.file.seek(0, os.SEEK_END)
        self.finished = True


@contextlib.contextmanager
def feature_writer(path, dtype: str = "float16") -> Iterator[FeatureWriter]:
    """A :class:`FeatureWriter` for the cache ``path``, which appears only once the block
    has called :meth:`FeatureWriter.finish` and ended without an error (an atomic write:
    :func:`espnet_mamba.io.atomic_write`).

    Example:
        >>> with feature_writer("exp/mi/cache/m.features") as writer:
        ...     writer.add("utt1", [x, t1, t2])
        ...     writer.finish({"layer_names": ["X", "1", "2"]})
    """
    with atomic_write(path, "wb") as f:
        writer = FeatureWriter(f, dtype)
        yield writer
        if not writer.finished:
            raise RuntimeError(f"{path}: feature cache closed without finish(); nothing was written")


class FeatureStore:
    """Read-only view of a cache file written by :class:`FeatureWriter` (memory-mapped).

    Attributes:
        meta: The metadata given to :meth:`FeatureWriter.finish` (identity, layer names ...).
        utt_ids: Utterances in file order.

    Raises:
        ValueError: The file is not a complete feature cache of this format (named in
            the message).
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            if len(head) < _HEADER_BYTES or head[: len(_MAGIC)] != _MAGIC:
                raise ValueError(f"{self.path}: not a mamba-mi feature cache (bad header)")
            (offset,) = struct.unpack("<Q", head[len(_MAGIC): len(_MAGIC) + 8])
            size = self.path.stat().st_size
            if not _HEADER_BYTES <= offset < size:
                raise ValueError(f"{self.path}: incomplete feature cache (no footer)")
            f.seek(offset)
            try:
                footer = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{self.path}: corrupt feature cache footer: {e}") from e
        if footer.get("version") != _FORMAT:
            raise ValueError(f"{self.path}: feature cache format {footer.get('version')}, this version reads "
                             f"{_FORMAT}: extract again")
        self.meta = footer["meta"]
        self._utts = footer["utts"]
        self.utt_ids = [u["id"] for u in self._utts]
        self._index = {u: i for i, u in enumerate(self.utt_ids)}
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(offset,))

    def __len__(self) -> int:
        return len(self.utt_ids)

    def get(self, utt_id: str, array: int) -> np.ndarray:
        """Array ``array`` of an utterance (0 = X, i = T_i), ``(n, d)`` float16/float32, read-only."""
        offset, dtype, shape = self._utts[self._index[utt_id]]["arrays"][array]
        count = int(np.prod(shape))
        item = np.dtype(dtype).itemsize
        return self._data[offset: offset + count * item].view(dtype).reshape(shape)

    def x_index(self, utt_id: str, layer: int) -> int:
        """Which array holds the X paired with layer ``layer`` (1..N): 0 for X itself."""
        if layer < 1:
            raise ValueError(f"layer must be 1..N (0 is X), got {layer}")
        return self._utts[self._index[utt_id]]["x_index"][layer - 1]

    def pair(self, utt_id: str, layer: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(X paired with layer, T_layer)``, each ``(n_layer, d)``, for layer 1..N."""
        return self.get(utt_id, self.x_index(utt_id, layer)), self.get(utt_id, layer)
