"""The wait policy of the celery_beat repair (timeguard/repair/beat_polls.py), on a simulated clock.

A wait ends early only on evidence — the polls it waits for, seen after its start — and otherwise lasts its whole
budget (beat's max_interval + margin), whatever the session view does (nothing, errors, polls from before the
reference). The session view here is a schedule of polls on the simulated clock; the real one (PostgreSQL's
pg_stat_activity) is tested in tests/integration/test_beat_polls_pg.py.
"""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from timeguard.repair.beat_polls import SAMPLE_S, Waited, wait_for_polls


class SimClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def mono(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds


class ScheduledPolls:
    """Beat's polls at given times of ``clock``: a poll is visible from its time on (for ``visible_s``, as a
    session's last statement is until its next one), if it started after the reference."""

    def __init__(self, clock: SimClock, at: list[float], visible_s: float = 10.0, fail: bool = False) -> None:
        self.clock, self.at, self.visible_s, self.fail = clock, sorted(at), visible_s, fail
        self.closed = False

    def reference(self) -> Any:
        if self.fail:
            raise RuntimeError("permission denied for pg_stat_activity")
        return self.clock.t

    def polls_since(self, reference: Any) -> set[tuple[Any, Any]]:
        now = self.clock.t
        return {(i, t) for i, t in enumerate(self.at) if reference < t <= now < t + self.visible_s}

    def close(self) -> None:
        self.closed = True


def run(clock: SimClock, watch: Any, *, polls: int, budget_s: float, cancel_at: float | None = None) -> Waited:
    return wait_for_polls(watch, polls=polls, budget_s=budget_s, sleep=clock.sleep, mono=clock.mono,
                          cancelled=lambda: cancel_at is not None and clock.t >= cancel_at)


budgets = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)


@given(budget=budgets)
def test_without_a_session_view_the_wait_is_its_budget(budget: float) -> None:
    clock = SimClock()
    waited = run(clock, None, polls=1, budget_s=budget)
    assert clock.sleeps == [budget]
    assert (waited.seen, waited.observed) == (0, False) and abs(waited.seconds - budget) < 1e-9
    assert "max_interval" in waited.how


@given(budget=budgets, polls=st.integers(1, 3))
def test_nothing_seen_never_ends_a_wait_before_its_budget(budget: float, polls: int) -> None:
    clock = SimClock()
    waited = run(clock, ScheduledPolls(clock, []), polls=polls, budget_s=budget)
    assert waited.seen == 0 and waited.observed
    assert budget - 1e-9 <= waited.seconds <= budget + SAMPLE_S + 1e-9
    assert clock.sleeps  # the moment of the wait is always given to sleep (tests hook it)


@given(budget=budgets)
def test_a_view_that_fails_falls_back_to_the_budget(budget: float) -> None:
    clock = SimClock()
    waited = run(clock, ScheduledPolls(clock, [100.1], fail=True), polls=1, budget_s=budget)
    assert waited.seen == 0 and abs(waited.seconds - budget) < 1e-9


@given(before=st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=5), budget=budgets)
def test_polls_before_the_reference_do_not_count(before: list[float], budget: float) -> None:
    clock = SimClock()
    waited = run(clock, ScheduledPolls(clock, before), polls=1, budget_s=budget)
    assert waited.seen == 0 and waited.seconds >= budget - 1e-9


@given(gaps=st.lists(st.floats(min_value=0.001, max_value=10.0), min_size=1, max_size=4),
       polls=st.integers(1, 3), budget=st.floats(min_value=0.5, max_value=12.0))
def test_the_wait_ends_at_the_wanted_poll_and_not_before(gaps: list[float], polls: int, budget: float) -> None:
    """Polls every ``gaps`` seconds. The wait ends once ``polls`` of them were seen — never before the last of them,
    at most one sample later — provided each came within the budget of the one before; else the budget ends it."""
    # A poll within one sample of the deadline: either way is right (the deadline runs from when a poll is *seen*,
    # up to one sample after it happened).
    assume(all(abs(gap - budget) > SAMPLE_S + 1e-6 for gap in gaps))
    clock = SimClock()
    start = clock.t
    times = []
    t = start
    for gap in gaps:
        t += gap
        times.append(t)
    waited = run(clock, ScheduledPolls(clock, times), polls=polls, budget_s=budget)
    end = start + waited.seconds
    # which polls a budget-per-poll wait can reach: each within the budget of the previous one (of the start)
    reachable, last = [], start
    for when in times:
        if when - last > budget:
            break
        reachable.append(when)
        last = when
    if len(reachable) >= polls:
        assert waited.seen >= polls
        assert reachable[polls - 1] <= end <= reachable[polls - 1] + SAMPLE_S + 1e-6
    else:
        assert waited.seen < polls
        assert end >= last + budget - 1e-6  # it waited the whole budget after the last poll it saw
        assert end <= last + budget + SAMPLE_S + 1e-6


def test_a_poll_seen_only_between_samples_still_counts_once_seen() -> None:
    """Django reconnects at every poll, so a poll's session vanishes at the next one: polls seen are kept."""
    clock = SimClock()
    waited = run(clock, ScheduledPolls(clock, [100.3, 101.3], visible_s=0.2), polls=2, budget_s=1.5)
    assert waited.seen == 2 and 1.3 <= waited.seconds <= 1.3 + SAMPLE_S


def test_cancel_ends_the_wait() -> None:
    clock = SimClock()
    waited = run(clock, ScheduledPolls(clock, []), polls=1, budget_s=30.0, cancel_at=101.0)
    assert waited.seen == 0 and waited.seconds <= 1.0 + SAMPLE_S
