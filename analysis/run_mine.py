#!/usr/bin/env python3
"""Layer-wise mutual information I(X; T_i) of every trained model under ``exp/`` (stage 13).

Usage::

    python analysis/run_mine.py exp/                      # all models, 1000 utterances
    python analysis/run_mine.py exp/ --n_utts 100 --models 'asr_*'
    python analysis/run_mine.py exp/ --estimator mine     # the paper's measurement as the main curve

For each model found under ``exp/`` (see :mod:`analysis.discover`), the script

1. draws ``--n_utts`` utterances (seeded) from the recipe's dev/test ``wav.scp``
   (``data/dev_clean``, ``data/test_clean`` beside ``exp/``) or ``--wav_scp``;
2. extracts X (the input of the first encoder layer) and T_i (each layer's output)
   of every utterance without padding frames (:mod:`analysis.features`) into a
   feature cache (one file per model, reused while the checkpoint, config and
   utterance list are unchanged);
3. estimates the curve three ways (:mod:`analysis.curve`): with ``--estimator``
   (default ``gcmi``, the calibrated dataset-level estimate), with
   ``--paper_estimator`` (default ``mine``, the paper's per-utterance recipe; finished
   estimates are saved as they come, so an interrupted run resumes where it stopped),
   and with ``--cross_check`` (default ``pooled-critic``, a neural estimate of
   another kind, compared on the shape);
4. calibrates the first two at the model's own shapes (:mod:`analysis.calibration`:
   synthetic ladders of known MI with its dimensions, frame counts and utterances);
5. writes ``<out>/<model>.csv`` (the main curve), ``<model>.<estimator>.csv`` (the
   others), ``<model>.json`` (all of it), plots, and a summary (``RESULTS.md``,
   ``summary.json``) with each verdict, its calibration and the cross-check.

A model that cannot be measured (missing or unreadable checkpoint or config,
NaN/inf features ...) is reported and skipped; the others are still written. The
exit status is 1 when no model could be measured, 2 for invalid options, and 3
when another run holds the output directory.
"""

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import discover, features, plots, report
from analysis.curve import get_estimator
from analysis.measure import measure_model
from analysis.run_config import RunConfig, config_from_args, get_parser

__all__ = ["OutputLock", "main", "run"]

logger = logging.getLogger("run_mine")

EXIT_NO_MODEL, EXIT_BAD_OPTIONS, EXIT_LOCKED = 1, 2, 3


class OutputLock:
    """An exclusive lock on ``<out>/.run_mine.lock`` for the length of a run.

    Raises:
        BlockingIOError: Another process holds it (the message names its pid).
    """

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".run_mine.lock"
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise BlockingIOError(f"{out_dir} is in use by another run_mine (pid {holder}); wait for it to "
                                  "finish or give another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# ------------------------------------------------------------------------ main
def _draw_utterances(cfg: RunConfig, measurable, skipped) -> List[Tuple[str, str]]:
    if not measurable:
        return []
    try:
        utterances = discover.select_utterances(list(cfg.wav_scps), cfg.n_utts, cfg.seed)
    except (OSError, ValueError) as e:
        if not cfg.wav_scps:
            e = f"no evaluation data: none of data/{{{','.join(discover.DEFAULT_EVAL_SETS)}}}/wav.scp " \
                f"next to {cfg.exp_dir}; give --wav_scp"
        logger.error("%s", e)
        skipped += [{"name": m.name, "reason": f"no utterances: {e}"} for m in measurable]
        measurable.clear()
        return []
    if len(utterances) < cfg.n_utts:
        logger.warning("only %d utterances available (asked for %d): using all of them", len(utterances),
                       cfg.n_utts)
    return utterances


def run(cfg: RunConfig) -> int:
    """Runs the analysis; returns the exit status."""
    try:
        entries = discover.discover_models(cfg.exp_dir, cfg.models, exclude=[cfg.out_dir])
    except FileNotFoundError as e:
        logger.error("%s", e)
        return EXIT_NO_MODEL
    candidates = [e for e in entries if e.kind is not None]
    for e in entries:
        if e.kind is None:
            logger.info("%s: %s", e.name, e.problem)
    skipped = [{"name": e.name, "reason": e.problem} for e in candidates if not e.ok]
    measurable = [e for e in candidates if e.ok]
    if not candidates:
        logger.error("%s: no trained models found%s", cfg.exp_dir, f" matching {list(cfg.models)}" if cfg.models else "")
    utterances = _draw_utterances(cfg, measurable, skipped)
    settings = {
        "exp_dir": cfg.exp_dir, "out": cfg.out_dir, "estimator": cfg.curves[0][1],
        "curves": [{"role": role, "estimator": name, "quantity": get_estimator(name).quantity}
                   for role, name in cfg.curves],
        "calibrate": cfg.calibrate, "n_utts": cfg.n_utts, "seed": cfg.seed, "max_frames": cfg.max_frames,
        "wav_scps": list(cfg.wav_scps), "n_utts_used": len(utterances),
        "options_text": report.options_text(cfg),
    }
    measured = []
    for k, entry in enumerate(measurable, start=1):
        logger.info("[%d/%d] %s (%s): %s", k, len(measurable), entry.name, entry.kind, entry.checkpoint)
        try:
            summary = measure_model(entry, utterances, cfg)
        except features.ExtractionError as e:
            logger.error("%s: skipped: %s", entry.name, e)
            skipped.append({"name": entry.name, "reason": str(e)})
            continue
        except Exception as e:  # one model's failure must not stop the others
            logger.exception("%s: skipped after an unexpected error", entry.name)
            skipped.append({"name": entry.name, "reason": f"{type(e).__name__}: {e}"})
            continue
        measured.append(summary)
        logger.info("%s: %s (%s)", entry.name, summary["verdict"], summary["test"])
    figures = []
    if cfg.plots and measured:
        plot_dir = cfg.out_dir / "plots"
        for m in measured:
            stem = report.model_file_stem(m["name"])
            figures += plots.plot_model(m, plot_dir, stem)
            if any("calibration" in c for c in m["curves"]):
                figures += plots.plot_calibration(m, plot_dir / f"{stem}_calibration")
        for name, title, members in plots.comparisons(measured):
            figures += plots.plot_curves(members, plot_dir / f"compare_{name}", title=title)
    md_path, _ = report.write_summary(cfg.out_dir, measured, skipped, settings, figures)
    for m in measured:
        print(f"{m['name']}: {m['verdict']} ({m['test']})")
    for s in skipped:
        print(f"{s['name']}: not measured: {s['reason']}")
    logger.info("summary: %s", md_path)
    if not measured:
        logger.error("no model could be measured")
        return EXIT_NO_MODEL
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
        force=True,  # ESPnet configures the root logger on import
    )
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_OPTIONS
    try:
        lock = OutputLock(cfg.out_dir)
    except BlockingIOError as e:
        logger.error("%s", e)
        return EXIT_LOCKED
    try:
        return run(cfg)
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
