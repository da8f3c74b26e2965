import math

import pytest

from semi3d.config import ScheduleConfig
from semi3d.engine.schedules import LRSchedule


def test_poly():
    s = LRSchedule(ScheduleConfig(name="poly", power=0.9), 100)
    assert s.factor(0) == 1.0
    assert s.factor(50) == pytest.approx(0.5 ** 0.9)
    assert s.factor(99) > 0


def test_cosine_with_warmup_and_restart():
    s = LRSchedule(ScheduleConfig(name="cosine", warmup=10, cycles=[100]), 300)
    assert s.factor(0) == pytest.approx(0.1 * 1.0)  # linear warm-up
    assert s.factor(50) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.factor(99) < 0.01
    assert s.factor(100) == pytest.approx(1.0)  # restart
    assert s.cycle_position(100) == (1, 0.0)
    assert s.cycle_position(200) == (1, 0.5)
    assert s.factor(299) < 0.001
