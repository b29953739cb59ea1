"""The loop's hooks on their own: the throughput meters."""

import pytest

from scaling.hooks import Clock, Meter


class FakeClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def seconds(self) -> float:
        return self.now


def test_the_logged_rate_is_smoothed_over_a_window_of_marks():
    clock = FakeClock()
    last, smoothed = Meter(clock, 100, 0), Meter(clock, 100, 0, window=4)
    for step, now in [(10, 1.0), (20, 2.0), (30, 3.0), (40, 3.01)]:  # a save paused the host
        clock.now = now
        assert last.rate(step) > 0 and smoothed.rate(step) > 0
        if step < 40:
            last.mark(step)
            smoothed.mark(step)
    assert last.rate(40) == pytest.approx(100 * 10 / 0.01)
    assert smoothed.rate(40) == pytest.approx(100 * 40 / 3.01)  # the oldest of 4 marks: step 0
    smoothed.restart(40)
    clock.now = 4.01
    assert smoothed.rate(50) == pytest.approx(100 * 10 / 1.0)
