"""lambda(t) schedules at their boundaries."""

from __future__ import annotations

import math

import pytest

from mad_distill.config import ScheduleConfig
from mad_distill.schedules import lambda_at


def test_constant():
    sched = ScheduleConfig()
    assert [lambda_at(sched, s) for s in (0, 1, 10**9)] == [1.0, 1.0, 1.0]


def test_linear_warmup_boundaries():
    sched = ScheduleConfig(kind="linear_warmup", warmup_steps=4)
    assert [lambda_at(sched, s) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lambda_at(ScheduleConfig(kind="linear_warmup"), 0) == 1.0  # no warm-up


def test_cosine_boundaries():
    sched = ScheduleConfig(kind="cosine", warmup_steps=2, total_steps=12)
    assert lambda_at(sched, 0) == 0.0
    assert lambda_at(sched, 1) == 0.5
    assert lambda_at(sched, 2) == 1.0  # end of warm-up = peak
    assert lambda_at(sched, 7) == pytest.approx(0.5)  # half-way through the decay
    assert lambda_at(sched, 12) == pytest.approx(0.0, abs=1e-12)
    assert lambda_at(sched, 1000) == pytest.approx(0.0, abs=1e-12)  # stays at the floor
    values = [lambda_at(sched, s) for s in range(2, 13)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_cosine_final_factor_and_total_from_caller():
    sched = ScheduleConfig(kind="cosine", final_factor=0.2)
    assert lambda_at(sched, 0, total_steps=10) == 1.0
    assert lambda_at(sched, 5, total_steps=10) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lambda_at(sched, 10, total_steps=10) == pytest.approx(0.2)
    assert lambda_at(sched, 3, total_steps=10.0) == pytest.approx(
        0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.3))
    )
    # the config's own total wins over the caller's
    own = ScheduleConfig(kind="cosine", total_steps=4)
    assert lambda_at(own, 4, total_steps=100) == pytest.approx(0.0, abs=1e-12)
    assert lambda_at(dict(kind="cosine", total_steps=4), 2) == pytest.approx(0.5)


def test_errors():
    cosine = ScheduleConfig(kind="cosine", warmup_steps=3)
    with pytest.raises(ValueError, match="total_steps is None"):
        lambda_at(cosine, 5)
    with pytest.raises(ValueError, match="total_steps must be an int > schedule.warmup_steps"):
        lambda_at(cosine, 5, total_steps=3)
    with pytest.raises(ValueError, match="total_steps must be an int"):
        lambda_at(cosine, 5, total_steps=float("inf"))
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        lambda_at(ScheduleConfig(), -1)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        lambda_at(ScheduleConfig(), 1.5)
    with pytest.raises(TypeError, match="schedule must be a ScheduleConfig"):
        lambda_at("cosine", 0)
    with pytest.raises(ValueError, match=r"schedule\.kind"):
        lambda_at(dict(kind="step"), 0)
