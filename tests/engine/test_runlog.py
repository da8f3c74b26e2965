"""The plain progress line's pace: seconds per step over recent steps, not since the start."""
import pytest

from semi3d.engine.runlog import Pace, eta_text, progress_line


def test_pace_follows_a_change_of_step_cost():
    """2 s per step for 100 steps, then 1 s: once the window holds only fast steps the pace is 1 s
    (the mean since the start would still say 1.33 s and put the ETA a third too high)."""
    pace = Pace(window=50)
    t = 0.0
    for step in range(10, 101, 10):
        t += 20.0
        assert pace.add(step, t) == pytest.approx(2.0)
    for step in range(110, 301, 10):
        t += 10.0
        got = pace.add(step, t)
    assert got == pytest.approx(1.0) and t / 300 == pytest.approx(4 / 3)
    assert pace.add(310, t + 10.0) == pytest.approx(1.0)


def test_pace_with_marks_sparser_than_its_window_and_after_a_resume():
    pace = Pace(window=50, start=100)  # resumed at step 100: the clock restarts at 0
    assert pace.add(200, 300.0) == pytest.approx(3.0)  # no mark inside the window: the one before it
    assert pace.add(300, 400.0) == pytest.approx(1.0)
    assert len(pace.marks) == 2


def test_progress_line_states_rate_and_eta():
    line = progress_line(120, 1840, {"loss/net2d": 0.12345, "loss/net3d": 0.5, "time": 9.0}, 2.0)
    assert line == "step 120/1840 (6.5 %)  loss net2d=0.1235 net3d=0.5000  2.00 s/it  ETA 57m20s"
    assert eta_text(0, 3600, 2.0) == "2h00m"
