"""Progress reporting of the MI analysis: a tqdm bar, log lines, or nothing."""

import logging
import sys
import time
from typing import Optional

__all__ = ["Progress"]

logger = logging.getLogger("analysis.progress")


class Progress:
    """Counts work done towards ``total`` units and shows it.

    Args:
        total: Units of work in all.
        desc: What is counted (the bar's label and the log lines' prefix).
        unit: Name of one unit ("epoch", "utt" ...).
        enabled: True: a tqdm bar (log lines when tqdm is not installed); False:
            silent; None: a bar on an interactive terminal, else a log line about
            every 10 % of the work.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: Optional[bool] = None) -> None:
        self.total, self.done, self.desc, self.unit = total, 0, desc, unit
        self.next_log = 0.1
        self.bar = None
        self.log = enabled is not False
        if sys.stderr.isatty() if enabled is None else enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
            except ImportError:
                pass
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        """Adds ``n`` units of finished work."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log and self.total and self.done / self.total >= self.next_log:
            logger.info("%s: %d/%d %s (%.0f%%), %.1f s", self.desc, self.done, self.total, self.unit,
                        100.0 * self.done / self.total, time.perf_counter() - self.start)
            while self.next_log <= self.done / self.total:
                self.next_log += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
