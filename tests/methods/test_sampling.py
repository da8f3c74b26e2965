import math

import pytest

from semi3d.config import ScheduleConfig
from semi3d.engine.schedules import LRSchedule
from semi3d.errors import InputError
from semi3d.methods.sampling import BatchComposer


def test_lrg_paper_boundaries_in_epochs():
    """The paper's defaults counted in epochs: 4000 epochs, warm-up (stage 1) 500, B = 5; the
    reference's ``floor((epoch - 500) / 3500 * 5)``."""
    comp = BatchComposer("lrg", 5, 500, 4000)
    n_u = [comp.n_unlabelled(e) for e in range(4000)]
    assert n_u[:500] == [0] * 500  # stage 1
    changes = {e: n_u[e] for e in range(1, 4000) if n_u[e] != n_u[e - 1]}
    assert changes == {1200: 1, 1900: 2, 2600: 3, 3300: 4}
    assert n_u == [math.floor(max(e - 500, 0) / 3500 * 5) for e in range(4000)]
    assert max(n_u) == 4 < 5
    assert comp.plan(3300) == (1, 4)


def test_lrg_paper_boundaries_in_iterations():
    """The paper config's iteration counts: R = 8, stage 1 = 500 epochs = 4000 iterations; each model
    trains 3500 epochs in stage 2 (alternating), i.e. 2 * 3500 * 8 = 56000 iterations."""
    total, w = 60000, 4000
    comp = BatchComposer("lrg", 5, w, total)
    for own_epoch, expect in [(1200, 1), (1900, 2), (2600, 3), (3300, 4)]:
        start = w + 2 * (own_epoch - 500) * 8  # the first iteration of the 2D model's epoch own_epoch
        assert comp.n_unlabelled(start - 1) == expect - 1 and comp.n_unlabelled(start) == expect
    assert comp.n_unlabelled(w - 1) == 0 and comp.n_unlabelled(w) == 0 and comp.n_unlabelled(total - 1) == 4


def test_lrg_keeps_growing_across_a_second_restart():
    """With a second lr restart (the reference's ``restart_epoch``), n_u is the position since stage
    2 began, not in the current cycle: it never falls back to 0 after the restart."""
    total, w = 4000, 500
    sched = LRSchedule(ScheduleConfig(name="cosine", cycles=[w, 2000]), total)
    comp = BatchComposer("lrg", 5, w, total)
    n_u = [comp.n_unlabelled(e, sched.factor(e)) for e in range(total)]
    assert all(b >= a for a, b in zip(n_u, n_u[1:]))
    assert n_u[1999] == n_u[2000] == math.floor(1500 / 3500 * 5) == 2 and n_u[-1] == 4


def test_lrg_lr_reads_the_lr_factor():
    sched = LRSchedule(ScheduleConfig(name="cosine", cycles=[100]), 1100)
    comp = BatchComposer("lrg_lr", 4, 100, 1100)
    assert comp.n_unlabelled(50, sched.factor(50)) == 0  # stage 1
    for step in range(100, 1100):
        f = sched.factor(step)
        assert comp.n_unlabelled(step, f) == min(math.floor((1 - f) * 4 + 1e-9), 3)
    # lr halfway down -> half the batch; never the whole batch
    assert comp.n_unlabelled(600, 0.5) == 2
    assert comp.n_unlabelled(1099, 0.0) == 3


def test_fixed_and_labelled_only():
    fixed = BatchComposer("fixed", 4, 100, 1000, fixed_unlabelled=2)
    assert fixed.n_unlabelled(10) == 0
    assert fixed.n_unlabelled(500) == 2
    lab = BatchComposer("labelled_only", 4, 100, 1000)
    assert lab.n_unlabelled(500, 0.1) == 0
    assert lab.plan(500, 0.1) == (4, 0)


def test_min_unlabelled_raises_the_start_of_stage_2():
    plain = BatchComposer("lrg", 4, 100, 1000)
    floor1 = BatchComposer("lrg", 4, 100, 1000, min_unlabelled=1)
    assert plain.n_unlabelled(100) == 0 and floor1.n_unlabelled(100) == 1  # first step of stage 2
    assert floor1.n_unlabelled(99) == 0  # stage 1 stays labelled-only
    assert [floor1.n_unlabelled(s) for s in (400, 600, 999)] == [plain.n_unlabelled(s) for s in (400, 600, 999)]
    assert BatchComposer("lrg_lr", 4, 100, 1000, min_unlabelled=2).n_unlabelled(100, 1.0) == 2


def test_bad_settings():
    with pytest.raises(InputError, match="choose one of"):
        BatchComposer("random", 4, 1, 10)
    with pytest.raises(InputError, match="0..3"):
        BatchComposer("fixed", 4, 1, 10, fixed_unlabelled=4)
    with pytest.raises(InputError, match="min_unlabelled.*0..3"):
        BatchComposer("lrg", 4, 1, 10, min_unlabelled=4)
    with pytest.raises(InputError, match="at least 2"):
        BatchComposer("lrg", 1, 1, 10)
    with pytest.raises(InputError, match="inside the run"):
        BatchComposer("lrg", 4, 10, 10)
