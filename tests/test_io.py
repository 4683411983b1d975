"""espnet_mamba.io: model files, wav.scp, audio entries and atomic writes."""

import datetime
import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from espnet_mamba import io

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ model files
def test_state_dict_round_trip_and_strict_load(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    state = io.read_state_dict(tmp_path / "m.pth")
    fresh = torch.nn.Linear(3, 2)
    io.load_state_dict_strict(fresh, state, tmp_path / "m.pth")
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)


def test_nested_state_dict_only_when_asked(tmp_path):
    weights = {"w": torch.ones(2)}
    torch.save({"model": weights, "epoch": torch.tensor(3)}, tmp_path / "checkpoint.pth")
    assert io.read_state_dict(tmp_path / "checkpoint.pth", containers=("model",)).keys() == {"w"}
    with pytest.raises(io.CheckpointError, match=r"checkpoint\.pth: not a model state dict"):
        io.read_state_dict(tmp_path / "checkpoint.pth")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a model state dict"),
        (b"not a torch file", "not a model state dict"),
        ({"w": 1.5}, r"not a model state dict \(a mapping of names to tensors"),
        ([torch.ones(1)], r"not a model state dict \(a mapping of names to tensors"),
        ({"w": torch.ones(1), "note": "text"}, r"not a model state dict \(a mapping"),
    ],
)
def test_files_that_are_not_state_dicts(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(io.CheckpointError, match=rf"bad\.pth: {message}"):
        io.read_state_dict(path)


def test_pickled_objects_are_refused_not_run(tmp_path):
    torch.save({"w": datetime.date(2026, 1, 1)}, tmp_path / "obj.pth")  # a class weights_only refuses
    with pytest.raises(io.CheckpointError, match=r"obj\.pth: not a model state dict"):
        io.read_state_dict(tmp_path / "obj.pth")


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.pth: no such model file"):
        io.read_state_dict(tmp_path / "none.pth")


def test_strict_load_names_file_config_and_mismatch():
    model = torch.nn.Linear(3, 2)
    before = model.weight.detach().clone()
    with pytest.raises(io.CheckpointError, match=r"m\.pth: weights do not match the model of c\.yaml: "
                                                 r"1 missing \(e\.g\. \['bias'\]\), 1 unexpected"):
        io.load_state_dict_strict(model, {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, "m.pth", "c.yaml")
    with pytest.raises(io.CheckpointError, match=r"m\.pth: tensor shapes differ from the model, e\.g\. weight: "
                                                 r"\(3, 3\) in the file vs \(2, 3\)"):
        io.load_state_dict_strict(model, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "m.pth")
    assert torch.equal(model.weight, before)  # nothing was loaded partly


# ---------------------------------------------------------------------- wav.scp
def test_wav_scp_keeps_order_and_entries(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("u2 b.flac\n\nu1   dir/a b.wav \nu3 x.ark:12\n")
    assert list(io.read_wav_scp(scp).items()) == [("u2", "b.flac"), ("u1", "dir/a b.wav"), ("u3", "x.ark:12")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("u1\n", r"wav\.scp:1: expected '<utt> <audio>', got 'u1'"),
        ("u1 a.flac\nu1 b.flac\n", r"wav\.scp:2: utterance 'u1' appears twice"),
        ("u1 a.flac\nu2 sox a.flac -t wav - |\n", r"wav\.scp:2: piped command entries are not supported"),
        ("\n \n", r"wav\.scp: no entries"),
    ],
)
def test_wav_scp_errors_name_file_and_line(tmp_path, text, message):
    scp = tmp_path / "wav.scp"
    scp.write_text(text)
    with pytest.raises(ValueError, match=message):
        io.read_wav_scp(scp)


def test_wav_scp_commands_when_allowed_and_missing_file(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("u1 cat a.wav |\n")
    assert io.read_wav_scp(scp, allow_commands=True) == {"u1": "cat a.wav |"}
    with pytest.raises(FileNotFoundError, match=r"nothing\.scp: no such wav\.scp file"):
        io.read_wav_scp(tmp_path / "nothing.scp")


# ------------------------------------------------------------------------ audio
def _pcm16(tmp_path, name="a.wav", rate=16000, channels=1, n=800):
    """An int16 wav file and its exact float values (int / 32768)."""
    ints = np.random.RandomState(0).randint(-2000, 2000, size=(n, channels)).astype(np.int16)
    soundfile.write(tmp_path / name, ints, rate, subtype="PCM_16")
    return ints.astype(np.float32) / 32768.0


def test_audio_file_relative_to_root_ark_and_command(tmp_path):
    import kaldiio

    expected = _pcm16(tmp_path)
    data, rate = io.read_audio("a.wav", root=tmp_path)
    assert rate == 16000 and np.array_equal(data, expected)
    data, _ = io.read_audio("cat a.wav |", root=tmp_path)
    assert np.array_equal(data, expected)
    kaldiio.save_ark(str(tmp_path / "x.ark"), {"u1": (16000, (expected[:, 0] * 32768).astype(np.int16))},
                     scp=str(tmp_path / "x.scp"))
    entry = (tmp_path / "x.scp").read_text().split()[1]  # x.ark:<offset>
    data, rate = io.read_audio(entry)
    assert rate == 16000 and np.array_equal(data, expected)
    assert np.array_equal(io.read_mono_audio("a.wav", 16000, root=tmp_path), expected[:, 0])
    assert io.audio_info(tmp_path / "a.wav") == (800, 16000)


def test_audio_errors_name_utterance_and_entry(tmp_path):
    _pcm16(tmp_path, "stereo.wav", channels=2)
    _pcm16(tmp_path, "8k.wav", rate=8000)
    _pcm16(tmp_path, "empty.wav", n=0)
    (tmp_path / "bad.flac").write_bytes(b"fLaC" + b"\0" * 50)
    cases = [
        ("missing.wav", 16000, r"utterance u1: missing\.wav: cannot read audio"),
        ("bad.flac", 16000, r"utterance u1: bad\.flac: cannot read audio"),
        ("false |", 16000, r"utterance u1: false \|: cannot read audio \(CalledProcessError"),
        ("empty.wav", 16000, r"utterance u1: empty\.wav: the audio is empty"),
        ("8k.wav", 16000, r"utterance u1: 8k\.wav: sample rate 8000 Hz, expected 16000 Hz"),
        ("stereo.wav", 16000, r"utterance u1: stereo\.wav: 2 channels, expected mono"),
    ]
    for entry, rate, message in cases:
        with pytest.raises(io.AudioError, match=message):
            io.read_mono_audio(entry, rate, root=tmp_path, name="u1")
    with pytest.raises(io.AudioError, match=r"bad\.flac: cannot read audio"):
        io.audio_info(tmp_path / "bad.flac")


# --------------------------------------------------------------- atomic writes
def _leftovers(directory: Path):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_text_bytes_and_torch(tmp_path):
    io.atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    with io.atomic_write(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    io.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pth")
    assert torch.equal(torch.load(tmp_path / "c.pth")["w"], torch.arange(3))
    umask = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "d.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "d.txt").stat().st_mode & 0o777 == 0o644
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with io.atomic_write(tmp_path / "e.txt", "a"):
            pass


def test_failure_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(KeyError):
        with io.atomic_write(target) as f:
            f.write("partial")
            raise KeyError("boom")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_disk_full_names_the_target_and_removes_the_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "features.bin"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=rf"cannot write {target}: No space left on device") as info:
        io.atomic_write_text(target, "new content")
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_a_write_the_system_refuses(tmp_path):
    """A real failed write (the file size limit, EFBIG) in a child process."""
    code = (
        "import resource, signal, sys\n"
        "from espnet_mamba.io import atomic_write_text\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        "    atomic_write_text(sys.argv[1], 'x' * 1000000)\n"
        "except OSError as e:\n"
        "    print(e.errno, e)\n"
    )
    target = tmp_path / "big.txt"
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{errno.EFBIG} ") and f"cannot write {target}" in out.stdout
    assert not target.exists() and _leftovers(tmp_path) == []


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "RESULTS.md"
    barrier = threading.Barrier(8)
    errors = []

    def write(i):
        try:
            with io.atomic_write(target) as f:
                barrier.wait(timeout=30)  # all eight temporary files are open at once
                f.write(f"writer {i}\n" * 1000)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lines = target.read_text().splitlines()
    assert len(lines) == 1000 and len(set(lines)) == 1  # one writer's complete text
    assert _leftovers(tmp_path) == []
