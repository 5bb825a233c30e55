"""Progress for listing, downloading and decoding: bars on a terminal, log lines in a pod."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


class LogProgress:
    """tqdm-like counter that logs a line every ``every`` seconds (no terminal in a pod)."""

    def __init__(self, desc: str, total: int | None = None, every: float = 10.0):
        self.desc, self.total, self.every = desc, total, every
        self.n = 0
        self._start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._log(now)

    def _log(self, now: float) -> None:
        rate = self.n / max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        log.info("%s: %d%s (%.1f/s)", self.desc, self.n, of, rate)

    def close(self) -> None:
        self._log(time.monotonic())

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(desc: str, total: int | None = None, mode: str = "auto", position: int = 0) -> Any:
    """A progress counter with ``update(n)`` and context-manager support.

    ``position`` stacks concurrent bars (download and decode run at the same time) on their own
    lines.
    """
    on_tty = sys.stderr.isatty()
    if mode == "on" or (mode == "auto" and on_tty):
        from tqdm import tqdm

        return tqdm(desc=desc, total=total, unit="img", dynamic_ncols=True, position=position)
    return LogProgress(desc, total)
