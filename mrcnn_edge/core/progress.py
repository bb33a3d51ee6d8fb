"""The one way mrcnn-edge tells a person what a long step is doing: lines on stderr, never stdout.

stdout carries results (tables, paths) that scripts read; progress and notes go to stderr. On a
terminal a counter rewrites its own line; in a log file it prints a line now and then.
"""
from __future__ import annotations

import sys
import time

__all__ = ["note", "status", "Progress"]


def note(message: str) -> None:
    """One line of progress or a notice, on stderr."""
    print(message, file=sys.stderr, flush=True)


def status(line: str) -> None:
    """A status line that replaces the previous one on a terminal (a live counter); a plain line elsewhere."""
    if sys.stderr.isatty():
        print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


class Progress:
    """``what done/total unit`` for a loop of known length, at most five updates a second.

    On a terminal the line is rewritten in place; elsewhere (CI logs, pipes) it is printed every
    ``log_every`` seconds and at the end, so a log shows that the step is alive without flooding.
    """

    def __init__(self, what: str, total: int, unit: str, enabled: bool = True, log_every: float = 10.0) -> None:
        self.what, self.total, self.unit, self.enabled = what, int(total), unit, enabled
        self._tty = sys.stderr.isatty()
        self._interval = 0.2 if self._tty else log_every
        self._last = float("-inf")
        self._shown = False

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done != self.total and now - self._last < self._interval:
            return
        self._last = now
        text = f"{self.what} {done}/{self.total} {self.unit}"
        if self._tty:
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
            self._shown = True
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self._shown:
            print(file=sys.stderr, flush=True)
            self._shown = False
