"""Tests of analysis.progress: log lines about every 10 %, silence, and a bar when asked."""

import logging

import pytest

from analysis.progress import Progress


def test_log_lines_about_every_tenth(caplog):
    with caplog.at_level(logging.INFO, logger="analysis.progress"):
        with Progress(40, "MI", "epoch", enabled=None) as progress:  # pytest's stderr is no terminal
            for _ in range(40):
                progress.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0].startswith("MI: 4/40 epoch (10%)") and lines[-1].startswith("MI: 40/40 epoch (100%)")


def test_a_big_step_logs_once_and_silent_mode_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="analysis.progress"):
        progress = Progress(10, "features", "utt")
        progress.update(7)
        progress.update(3)
        progress.close()
        assert [r.getMessage()[:18] for r in caplog.records] == ["features: 7/10 utt", "features: 10/10 ut"]
        caplog.clear()
        with Progress(10, "quiet", enabled=False) as quiet:
            quiet.update(10)
        assert caplog.records == [] and quiet.done == 10


def test_enabled_shows_a_bar(capsys):
    pytest.importorskip("tqdm")
    with Progress(3, "bar", "step", enabled=True) as progress:
        progress.update(3)
    assert progress.bar is not None and "bar" in capsys.readouterr().err
