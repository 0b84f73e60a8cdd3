"""Keep a library's repeated warnings from flooding the log.

pydicom warns about the same thing for every data element it decodes (an
unknown Specific Character Set: once when intake reads the header, again for
every text value the worker reads), so one odd sender writes the same line
thousands of times per series. :class:`RepeatFilter` lets each distinct
message through once per window and says how often it was held back.
"""

from __future__ import annotations

import logging
import threading
import time

REPEAT_WINDOW_SECONDS = 3600.0
MAX_TRACKED = 1024


class RepeatFilter(logging.Filter):
    """Pass a message the first time in each window; count the repeats in between."""

    def __init__(self, window_seconds: float = REPEAT_WINDOW_SECONDS) -> None:
        super().__init__()
        self.window = window_seconds
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        with self._lock:
            first, held = self._seen.get(key, (-self.window, 0))
            if now - first < self.window:
                self._seen[key] = (first, held + 1)
                return False
            if len(self._seen) >= MAX_TRACKED:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it since)"
            record.args = None
        return True


def quiet_repeats(*logger_names: str) -> None:
    """Install one :class:`RepeatFilter` on each named logger (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())
