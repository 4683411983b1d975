"""File reading and writing, and option checks, shared by espnet_mamba, s3prl_upstream
and analysis.

- :func:`read_state_dict`, :func:`load_state_dict_strict`: model files, read with
  ``weights_only`` and loaded strictly, every problem named with the file.
- :func:`read_wav_scp`: Kaldi ``wav.scp`` tables.
- :func:`read_audio`, :func:`read_mono_audio`, :func:`audio_info`: one ``wav.scp``
  entry (an audio file, a Kaldi ``file.ark:offset`` or a ``command |``) as samples.
- :func:`atomic_write`, :func:`atomic_write_text`, :func:`atomic_torch_save`: a file
  appears complete or not at all: it is written under a unique temporary name in the
  target's directory, flushed to disk, then renamed over the target; on any failure
  (disk full included) the temporary file is removed and the error names the target.
- :func:`check_int`, :func:`parse_device`: integer options and ``--device`` values,
  checked with the same messages everywhere.

This module imports nothing of the project, so every package may use it.
"""

import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "AudioError",
    "CheckpointError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "audio_info",
    "check_int",
    "load_state_dict_strict",
    "parse_device",
    "read_audio",
    "read_mono_audio",
    "read_state_dict",
    "read_wav_scp",
    "torch_load",
]

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A model file (or its config) cannot be used: unreadable, not a state dict, or
    weights that do not match the model. The message names the file."""


class AudioError(ValueError):
    """An audio entry cannot be read or is not what the caller needs (rate, channels)."""


# ------------------------------------------------------------------ model files
def torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Not a PyTorch file, truncated, or holding objects other than
            tensors and plain containers (``weights_only`` refuses them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle, I/O and weights_only errors
        text = str(e).strip()
        first_line = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(
            f"{path}: not a model state dict (a file of tensors written by torch.save, e.g. "
            f"ESPnet's latest.pth or valid.loss.best.pth, is expected): {first_line}"
        ) from e


def read_state_dict(path: PathLike, containers: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """The state dict (names -> tensors) in a model file.

    Args:
        path: A file written by ``torch.save``.
        containers: Keys under which a state dict may be nested, tried in order, e.g.
            ``("model",)`` for ESPnet's resumable ``checkpoint.pth``; empty: the file
            must hold the state dict itself.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Unreadable, or not a mapping of names to tensors.
    """
    state = torch_load(path)
    for key in containers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a model state dict (a mapping of names to tensors expected)")
    return state


def load_state_dict_strict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: PathLike,
    config: Optional[PathLike] = None,
) -> None:
    """``model.load_state_dict(state, strict=True)``, refusing a partial load with an
    error that names the file, its config and the first mismatches.

    Args:
        model: The freshly built model.
        state: Its weights, read from ``path``.
        path: The model file (for the message).
        config: The config the model was built from (for the message).

    Raises:
        CheckpointError: Missing or unexpected keys, or tensors of other shapes.
    """
    built = f"the model of {config}" if config is not None else "the model"
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {built}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise CheckpointError(
            f"{path}: tensor shapes differ from {built}, e.g. {wrong[0]}: "
            f"{tuple(state[wrong[0]].shape)} in the file vs {tuple(expected[wrong[0]].shape)}"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------- wav.scp
def read_wav_scp(path: PathLike, allow_commands: bool = False) -> Dict[str, str]:
    """Read a Kaldi ``wav.scp``: utterance id -> audio entry, in file order.

    Entries are kept as written; relative audio paths are relative to the directory
    the recipe runs in (as in Kaldi and ESPnet), not to the wav.scp.

    Args:
        path: The wav.scp file.
        allow_commands: Accept ``command |`` entries (for :func:`read_audio`, which
            runs them); otherwise they are refused.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A malformed line, a refused command entry, a repeated utterance
            id, or no entries; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such wav.scp file")
    table: Dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<utt> <audio>', got {line!r}")
            utt, entry = parts
            if entry.endswith("|") and not allow_commands:
                raise ValueError(
                    f"{path}:{lineno}: piped command entries are not supported ({entry!r}); "
                    "use the dumped wav.scp (dump/raw/<set>/wav.scp), whose entries are audio files"
                )
            if utt in table:
                raise ValueError(f"{path}:{lineno}: utterance {utt!r} appears twice")
            table[utt] = entry
    if not table:
        raise ValueError(f"{path}: no entries")
    return table


# ------------------------------------------------------------------------ audio
def _where(entry: str, name: Optional[str]) -> str:
    return f"utterance {name}: {entry}" if name is not None else entry


def _read_ark(entry: str, root: Path) -> Tuple[np.ndarray, int]:
    import kaldiio

    path, _, offset = entry.rpartition(":")
    path = path if os.path.isabs(path) else str(root / path)
    loaded = kaldiio.load_mat(f"{path}:{offset}")
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
        raise ValueError("the ark entry holds a matrix, not audio")
    rate, data = loaded
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return data.astype(np.float32).reshape(len(data), -1), int(rate)


def read_audio(entry: str, root: Optional[PathLike] = None, name: Optional[str] = None) -> Tuple[np.ndarray, int]:
    """Read one ``wav.scp`` entry as float32 samples in [-1, 1].

    Args:
        entry: An audio file (any format soundfile reads), a Kaldi ``file.ark:offset``
            or a shell command ending in ``|`` that writes an audio file.
        root: Directory that relative paths and commands start from (default: the
            current directory).
        name: Utterance id, for error messages.

    Returns:
        Samples ``(N, C)`` and the sample rate.

    Raises:
        AudioError: Unreadable or empty (the message names the utterance and entry).
    """
    import soundfile

    root = Path(root) if root is not None else Path.cwd()
    entry = entry.strip()
    try:
        if entry.endswith("|"):
            result = subprocess.run(entry[:-1], shell=True, cwd=root, capture_output=True, check=True)
            data, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
        elif ".ark:" in entry and not Path(entry).exists():
            data, rate = _read_ark(entry, root)
        else:
            path = Path(entry) if os.path.isabs(entry) else root / entry
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile, kaldiio and subprocess errors
        raise AudioError(f"{_where(entry, name)}: cannot read audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{_where(entry, name)}: the audio is empty")
    return np.ascontiguousarray(data, dtype=np.float32), int(rate)


def read_mono_audio(
    entry: str, sample_rate: int, root: Optional[PathLike] = None, name: Optional[str] = None
) -> np.ndarray:
    """:func:`read_audio` of a mono entry at ``sample_rate``: samples ``(N,)`` float32.

    Raises:
        AudioError: Unreadable, empty, another sample rate or several channels.
    """
    data, rate = read_audio(entry, root, name)
    if rate != sample_rate:
        raise AudioError(f"{_where(entry, name)}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if data.shape[1] != 1:
        raise AudioError(f"{_where(entry, name)}: {data.shape[1]} channels, expected mono")
    return np.ascontiguousarray(data[:, 0])


def audio_info(path: PathLike, name: Optional[str] = None) -> Tuple[int, int]:
    """(samples, sample rate) of an audio file, read from its header.

    Raises:
        AudioError: Unreadable file (the message names it).
    """
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as e:  # soundfile errors
        raise AudioError(f"{_where(str(path), name)}: cannot read audio ({type(e).__name__}: {e})") from e
    return int(info.frames), int(info.samplerate)


# --------------------------------------------------------------- atomic writes
def _new_file_mode() -> int:
    """Permissions of a new regular file under the current umask (0o644 usually)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing so that it appears complete or not at all.

    The block writes to a new file of a unique name (``.<name>.<random>.tmp``) in the
    target's directory, so concurrent writers never share one; on leaving the block
    the file is flushed, fsync-ed and renamed over ``path``. If the block or the
    write fails, the temporary file is removed, ``path`` keeps its previous content,
    and an ``OSError`` (disk full, ...) is re-raised with ``path`` in its message.

    Args:
        path: The target; its directory is created if needed.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.

    Example:
        >>> with atomic_write("exp/summary.json") as f:
        ...     f.write(text)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` (same errno, so the same OSError subclass) with a message naming ``path``."""
    message = f"cannot write {path}: {error.strerror or error}; {path} was left as it was"
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


# ------------------------------------------------------------ options, devices
def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raises ValueError (naming ``name``) unless ``value`` is an integer, Python's or
    numpy's but not a bool, of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def parse_device(text: Optional[str]) -> torch.device:
    """The device a ``--device`` value names; None or ``"auto"``: cuda when available,
    else cpu.

    Raises:
        ValueError: Not a device name, CUDA asked for but unavailable, or a CUDA index
            past the last device (the message starts with ``--device <text>``).
    """
    if text is None or text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device {text}: not a device (auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return device
