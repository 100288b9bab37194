import math

import pytest

from dreamfusion.training.schedules import LinearRamp, WarmupCosine


def test_warmup_cosine_matches_the_paper_shape():
    s = WarmupCosine(total_steps=15000)  # warm-up 1e-9 -> 1e-4 over 3,000 steps, cosine to 1e-6
    peak = 1e-4
    assert math.isclose(s(0) * peak, 1e-9, rel_tol=1e-6)
    assert math.isclose(s(3000) * peak, 1e-4, rel_tol=1e-6)
    assert math.isclose(s(15000) * peak, 1e-6, rel_tol=1e-6)
    assert s(1500) < s(2999) and s(4000) > s(9000) > s(14000)


def test_linear_ramp():
    r = LinearRamp(total_steps=100, start=1e-4, end=1e-2, fraction=0.5)
    assert r(0) == 1e-4 and r(50) == 1e-2 and r(99) == 1e-2
    assert math.isclose(r(25), (1e-4 + 1e-2) / 2)


def test_warmup_cosine_restarts_each_cycle_with_the_same_shape():
    once = WarmupCosine(100, 0.1, start=0.0, end=0.1)
    twice = WarmupCosine(200, 0.1, start=0.0, end=0.1, restarts=(100,))
    assert [twice(s) for s in range(100)] == [once(s) for s in range(100)]  # the first cycle is unchanged
    assert twice(100) == 0.0 and twice(110) == 1.0  # warm-up again, over 10 % of the added 100 steps
    assert twice(199) == pytest.approx(once(99))
    with pytest.raises(ValueError, match="restarts"):
        WarmupCosine(100, restarts=(100,))


def test_warmup_cosine_in_steps_counting_the_current_step():
    # The prior's and the classifiers' convention: the first step already gets 1/W of the peak.
    s = WarmupCosine(100, start=0.0, end=0.0, peak=2.0, warmup_steps=10, warmup_offset=1)
    assert s(0) == pytest.approx(0.2) and s(9) == pytest.approx(2.0) and s(10) == pytest.approx(2.0)
    assert s(55) == pytest.approx(1.0) and 0.0 < s(99) < 0.01
    assert WarmupCosine(100, start=0.0, end=0.5, warmup_steps=0)(0) == 1.0  # no warm-up at all
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(100, warmup_steps=-1)
