"""utils.training.PhaseClock: a run's wall time split into its phases (train_log.json "seconds")."""

from __future__ import annotations

import time

import torch

from utils.training import PhaseClock


def test_phases_and_step_stretches_get_their_own_time():
    clock = PhaseClock(torch.device("cpu"), "steps_a")
    time.sleep(0.05)  # steps
    with clock.phase("grids"):
        time.sleep(0.03)
    time.sleep(0.02)  # steps again, same name
    clock.mark("steps_b")
    time.sleep(0.04)
    with clock.phase("grids"):
        time.sleep(0.01)
    s = clock.summary()
    assert set(s) == {"steps_a", "grids", "steps_b"}
    for name, want in (("steps_a", 0.07), ("grids", 0.04), ("steps_b", 0.04)):
        assert want - 0.002 <= s[name] <= want + 0.03, (name, s)


def test_non_finite_watch_names_the_first_bad_step_across_checks_and_a_full_buffer():
    """NonFiniteWatch reports the first step whose loss was NaN/Inf (iteration, frame index), keeps it
    across later checks, and loses nothing when more steps than its buffer holds come between checks."""
    from utils.training import NonFiniteWatch

    watch = NonFiniteWatch(capacity=3, device="cpu")
    for it in range(1, 5):  # 4 steps into a 3-slot buffer: the 4th forces a read of the first three
        watch.record(it, 10 + it, torch.tensor(float(it)))
    assert watch.first_bad() is None and watch.steps == []
    losses = {5: 1.0, 6: float("inf"), 7: 2.0, 8: float("nan"), 9: 3.0, 10: 4.0}
    for it, value in losses.items():  # 6 steps, 3 slots: the bad step 6 sits in the first buffer-full
        watch.record(it, 100 + it, torch.tensor(value))
    assert watch.first_bad() == (6, 106)
    watch.record(11, 111, torch.tensor(float("nan")))
    assert watch.first_bad() == (6, 106)  # the first one stays the answer
