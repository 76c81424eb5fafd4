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
