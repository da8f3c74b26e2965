import math

import pytest

from semi3d.config import ScheduleConfig
from semi3d.engine.sampling import BatchComposer
from semi3d.engine.schedules import LRSchedule
from semi3d.errors import InputError


def _paper_epochs():
    """The paper's defaults counted in epochs: 4000 epochs, warm-up (stage 1) 500, B = 5."""
    sched = LRSchedule(ScheduleConfig(name="cosine", cycles=[500], warmup=50), 4000)
    return sched, BatchComposer("lrg", 5)


def test_lrg_paper_boundaries_in_epochs():
    sched, comp = _paper_epochs()
    n_u = [comp.n_unlabelled(e, sched.cycle_position(e), sched.factor(e)) for e in range(4000)]
    assert n_u[:500] == [0] * 500  # stage 1
    changes = {e: n_u[e] for e in range(1, 4000) if n_u[e] != n_u[e - 1]}
    assert changes == {1200: 1, 1900: 2, 2600: 3, 3300: 4}
    assert n_u[1199] == 0 and n_u[1899] == 1 and n_u[2599] == 2 and n_u[3299] == 3 and n_u[3999] == 4
    assert max(n_u) == 4 < 5
    assert comp.plan(3300, sched.cycle_position(3300), 1.0) == (1, 4)


def test_lrg_paper_boundaries_in_iterations():
    """The paper config's iteration counts: R = 8, stage 1 = 500 epochs = 4000 iterations; each model
    trains 3500 epochs in stage 2 (alternating), i.e. 2 * 3500 * 8 = 56000 iterations."""
    total, w = 60000, 4000
    sched = LRSchedule(ScheduleConfig(name="cosine", cycles=[w], warmup=400), total)
    comp = BatchComposer("lrg", 5, warmup_iterations=w)

    def n_u(step):
        return comp.n_unlabelled(step, sched.cycle_position(step), sched.factor(step))

    for own_epoch, expect in [(1200, 1), (1900, 2), (2600, 3), (3300, 4)]:
        start = w + 2 * (own_epoch - 500) * 8  # the first iteration of the 2D model's epoch own_epoch
        assert n_u(start - 1) == expect - 1 and n_u(start) == expect
    assert n_u(w - 1) == 0 and n_u(w) == 0 and n_u(total - 1) == 4


def test_lrg_lr_reads_the_lr_factor():
    sched = LRSchedule(ScheduleConfig(name="cosine", cycles=[100]), 1100)
    comp = BatchComposer("lrg_lr", 4)
    assert comp.n_unlabelled(50, sched.cycle_position(50), sched.factor(50)) == 0  # stage 1
    for step in range(100, 1100):
        f = sched.factor(step)
        assert comp.n_unlabelled(step, sched.cycle_position(step), f) == min(math.floor((1 - f) * 4 + 1e-9), 3)
    # lr halfway down -> half the batch; never the whole batch
    assert comp.n_unlabelled(600, (1, 0.5), 0.5) == 2
    assert comp.n_unlabelled(1099, (1, 0.999), 0.0) == 3


def test_fixed_and_labelled_only():
    fixed = BatchComposer("fixed", 4, fixed_unlabelled=2)
    assert fixed.n_unlabelled(10, (0, 0.1), 1.0) == 0
    assert fixed.n_unlabelled(500, (1, 0.0), 1.0) == 2
    lab = BatchComposer("labelled_only", 4)
    assert lab.n_unlabelled(500, (1, 0.9), 0.1) == 0
    assert lab.plan(500, (1, 0.9), 0.1) == (4, 0)


def test_bad_settings():
    with pytest.raises(InputError, match="choose one of"):
        BatchComposer("random", 4)
    with pytest.raises(InputError, match="0..3"):
        BatchComposer("fixed", 4, fixed_unlabelled=4)
    with pytest.raises(InputError, match="at least 2"):
        BatchComposer("lrg", 1)
