"""How a management command waits for workers: poll, report progress, hint once when nothing moves, give up at a
timeout (no Django, no app). Each command keeps its own messages and the order of its checks in its ``step``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Waiting:
    """The clock of one wait: when it started, when progress last showed, whether the no-progress hint was given."""

    def __init__(self, *, timeout: float | None = None, hint_after: float | None = None):
        self.timeout, self.hint_after = timeout, hint_after
        self.started = self.last_change = time.monotonic()
        self.hinted = False

    @property
    def waited(self) -> float:
        """Seconds since the wait began."""
        return time.monotonic() - self.started

    def progressed(self) -> None:
        """Something moved: the no-progress clock starts again."""
        self.last_change = time.monotonic()

    def hint_due(self, when: bool = True) -> bool:
        """True once: the first time nothing has moved for ``hint_after`` seconds while ``when`` holds."""
        if self.hinted or not when or self.hint_after is None or time.monotonic() - self.last_change <= self.hint_after:
            return False
        self.hinted = True
        return True

    def timed_out(self) -> bool:
        """Whether the wait ran past its timeout (None or 0: it never does)."""
        return bool(self.timeout) and self.waited > self.timeout


def wait_until(
    step: Callable[[Waiting], bool],
    *,
    interval: float,
    timeout: float | None = None,
    hint_after: float | None = None,
) -> Waiting:
    """Call ``step(waiting)`` every ``interval`` seconds until it returns True.

    ``step`` reads the state, reports progress (calling ``waiting.progressed()``), prints its hint when
    ``waiting.hint_due()``, and raises its own error when the thing failed or ``waiting.timed_out()``.
    """
    waiting = Waiting(timeout=timeout, hint_after=hint_after)
    while not step(waiting):
        time.sleep(interval)
    return waiting
