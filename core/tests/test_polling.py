"""How a command waits: its step runs until it says done, the hint comes once, the timeout is the step's to raise."""

from __future__ import annotations

import time

import pytest

from core.polling import Waiting, wait_until


def test_the_step_runs_until_it_says_done_and_the_hint_comes_once_after_no_progress():
    calls, hints = [], []

    def step(waiting: Waiting) -> bool:
        calls.append(waiting.waited)
        if waiting.hint_due():
            hints.append(len(calls))
        return len(calls) == 6

    wait_until(step, interval=0.01, hint_after=0.015)
    assert len(calls) == 6 and len(hints) == 1


def test_progress_restarts_the_hint_clock_and_a_condition_can_hold_it_back():
    waiting = Waiting(hint_after=0.02)
    time.sleep(0.03)
    assert not waiting.hint_due(when=False)
    waiting.progressed()
    assert not waiting.hint_due()
    time.sleep(0.03)
    assert waiting.hint_due() and not waiting.hint_due()


def test_the_timeout_is_seen_by_the_step_and_none_or_zero_means_never():
    assert not Waiting(timeout=None).timed_out() and not Waiting(timeout=0).timed_out()

    def step(waiting: Waiting) -> bool:
        if waiting.timed_out():
            raise TimeoutError(f"gave up after {waiting.timeout}s")
        return False

    with pytest.raises(TimeoutError, match="gave up after 0.02s"):
        wait_until(step, interval=0.005, timeout=0.02)
