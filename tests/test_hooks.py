"""The loop's hooks on their own: the throughput meters, and a stop signal in one process
(across processes: tests/test_distributed.py)."""

import math
import os
import signal

import jax.numpy as jnp
import pytest

from scaling.checkpoint import Checkpointer
from scaling.hooks import Checkpointing, Clock, Interruption, LoopState, Meter
from scaling.parallel import Placement


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


def loop_at(step: int, total_steps: int) -> LoopState:
    """A one-model loop after `step` of `total_steps` steps, on JAX's default device."""
    return LoopState(state={"w": jnp.arange(3.0)}, step=step, total_steps=total_steps, k=1,
                     placement=Placement("none", None), batch_at=lambda s: None, clock=Clock(),
                     rows=[[]], diverged=[0])


def test_one_process_stops_after_the_step_its_signal_came_in_with_its_checkpoint(tmp_path):
    """One process: its own signal, no agreement; a signal in the last step changes nothing."""
    before = signal.getsignal(signal.SIGUSR1)
    checkpointer = Checkpointer(tmp_path, keep=2)
    interruption = Interruption(Checkpointing(checkpointer, 1000, math.inf, lambda _: {}),
                                signals=(signal.SIGUSR1,))
    loop = loop_at(3, 5)
    interruption(loop)
    assert not loop.stop
    os.kill(os.getpid(), signal.SIGUSR1)
    interruption(loop)
    assert loop.stop and loop.interrupted == "SIGUSR1"
    last = loop_at(5, 5)
    interruption(last)
    assert not last.stop and last.interrupted is None
    interruption.close()
    checkpointer.close()  # waits for the save
    assert [p.name for p in tmp_path.iterdir()] == ["3"]
    assert signal.getsignal(signal.SIGUSR1) is before
