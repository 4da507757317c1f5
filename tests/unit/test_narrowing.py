"""The HTTP Date narrowing, against simulated servers: sound for any offset and delays, never wider, and converging.

A simulated server has a clock ``offset_ns`` ahead of the host's (true − host); a request sent at host time t0
reaches it ``out_ns`` later, where it stamps the whole second its clock reads, and the answer arrives ``back_ns``
after that. The client side is driven exactly as :func:`timeguard.measure.http.query_http` drives it.
"""

from __future__ import annotations

import inspect
import itertools

from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.http import query_http
from timeguard.measure.narrowing import NS, Interval, date_constraint, rtt_estimate_ns, send_at_ns

YEARS_NS = 20 * 365 * 86400 * NS
offsets = st.integers(-YEARS_NS, YEARS_NS)
host_starts = st.integers(1_600_000_000 * NS, 2_000_000_000 * NS)
delay = st.integers(0, 400_000_000)  # one way, up to 0.4 s
#: What query_http adds before the earliest send (wake-up margin and the least lateness seen): up to 7 ms.
margins = st.integers(0, 7_000_000)
BUDGET = inspect.signature(query_http).parameters["requests_count"].default


def simulate(
    offset_ns: int,
    start_ns: int,
    legs: list[tuple[int, int, int]],
    *,
    margin_ns: int = 2_000_000,
    step_after: int | None = None,
    step_ns: int = 0,
) -> list[Interval | None]:
    """The interval known after each probe (None once the answers contradict). ``legs``: (late, out, back) per
    probe, late = how much after the scheduled moment it left. The server's clock steps by ``step_ns`` after the
    ``step_after``-th answer."""
    now = start_ns
    known: Interval | None = None
    rtts: list[int] = []
    history: list[Interval | None] = []
    for index, (late, out, back) in enumerate(legs):
        if known is None:
            t0 = now + late
        else:
            scheduled = send_at_ns(known, rtt_estimate_ns(rtts) // 2, now + margin_ns)
            assert now + margin_ns <= scheduled < now + margin_ns + NS  # waits less than one second
            t0 = scheduled + late
        server_offset = offset_ns + (step_ns if step_after is not None and index >= step_after else 0)
        date_s = (t0 + out + server_offset) // NS  # the server truncates to its second
        t1 = t0 + out + back
        rtts.append(t1 - t0)
        proved = date_constraint(date_s, t0, t1)
        known = proved if known is None else known.intersect(proved)
        history.append(known)
        if known is None:
            break
        now = t1
    return history


@given(offsets, host_starts, st.lists(st.tuples(st.integers(0, 50_000_000), delay, delay), min_size=1, max_size=12),
       margins)
def test_the_interval_always_holds_the_true_offset(offset_ns, start_ns, legs, margin_ns):
    """Any offset, any (asymmetric, jittered) delays, any lateness: an honest server never contradicts itself and
    every interval contains the true offset."""
    for known in simulate(offset_ns, start_ns, legs, margin_ns=margin_ns):
        assert known is not None
        assert known.lo_ns <= offset_ns < known.hi_ns


@given(offsets, host_starts, st.lists(st.tuples(st.integers(0, 50_000_000), delay, delay), min_size=2, max_size=12))
def test_the_interval_never_widens(offset_ns, start_ns, legs):
    history = simulate(offset_ns, start_ns, legs)
    for before, after in itertools.pairwise(history):
        assert before is not None and after is not None
        assert before.lo_ns <= after.lo_ns and after.hi_ns <= before.hi_ns


@given(offsets, host_starts, st.integers(0, 100_000_000), st.integers(1, 40), margins)
def test_the_schedule_halves_down_to_half_the_round_trip(offset_ns, start_ns, half_rtt_ns, probes, margin_ns):
    """With a steady symmetric round trip, each scheduled probe halves the interval plus rtt/2: after k probes
    it is ±(rtt/2 + 1 s / 2^k), so the default budget ends within ±(rtt/2 + 7.8 ms) and more probes reach rtt/2."""
    legs = [(0, half_rtt_ns, half_rtt_ns)] * probes
    history = simulate(offset_ns, start_ns, legs, margin_ns=margin_ns)
    for k, known in enumerate(history, start=1):
        assert known is not None
        # k ns of slack: each integer middle rounds down by at most one.
        assert known.width_ns / 2 <= half_rtt_ns + NS / 2**k + k
    if probes >= 30:
        assert history[-1] is not None and history[-1].width_ns / 2 <= half_rtt_ns + 1_000


def test_the_default_budget_reaches_the_documented_precision_on_loopback():
    """http.py's docstring: 7 probes on loopback give about ±8 ms (a 0.2 ms round trip)."""
    assert BUDGET == 7
    known = simulate(123_456_789, 1_700_000_000 * NS, [(0, 100_000, 100_000)] * BUDGET)[-1]
    assert known is not None and known.width_ns / 2 < 8 * 1_000_000


@given(offsets, host_starts, st.lists(st.tuples(st.just(0), delay, delay), min_size=2, max_size=8),
       st.integers(3 * NS, 3600 * NS), st.sampled_from([-1, 1]))
def test_a_server_clock_step_beyond_one_second_plus_the_round_trip_is_a_contradiction(
    offset_ns, start_ns, legs, step_ns, sign
):
    """A Date that moved by more than the interval a single answer allows cannot be intersected into a wrong
    offset: the answers are found to contradict each other."""
    history = simulate(offset_ns, start_ns, legs, step_after=1, step_ns=sign * step_ns)
    max_rtt = max(out + back for _, out, back in legs)
    if step_ns >= 2 * NS + 2 * max_rtt:  # two one-answer intervals that far apart cannot overlap
        assert history[-1] is None and len(history) == 2


@given(st.integers(-50, 50), st.integers(1, 50), st.integers(-50, 50), st.integers(1, 50))
def test_intersect_is_the_set_intersection(a_lo, a_width, b_lo, b_width):
    a, b = Interval(a_lo, a_lo + a_width), Interval(b_lo, b_lo + b_width)
    both = {x for x in range(a.lo_ns, a.hi_ns)} & {x for x in range(b.lo_ns, b.hi_ns)}
    got = a.intersect(b)
    if not both:
        assert got is None
    else:
        assert got is not None and set(range(got.lo_ns, got.hi_ns)) == both
        assert got == b.intersect(a)


@given(st.integers(0, 3 * NS), st.integers(0, 10**9), st.integers(0, 10**9))
def test_a_date_constraint_is_one_second_plus_the_round_trip_wide(t0_ns, rtt_ns, date_s):
    proved = date_constraint(date_s, t0_ns, t0_ns + rtt_ns)
    assert proved.width_ns == NS + rtt_ns
    assert proved.lo_ns == date_s * NS - (t0_ns + rtt_ns)


@given(st.integers(-YEARS_NS, YEARS_NS), st.integers(1, 2 * NS), st.integers(0, NS), host_starts)
def test_the_send_moment_puts_the_server_tick_at_the_middle(lo_ns, width_ns, half_rtt_ns, not_before_ns):
    known = Interval(lo_ns, lo_ns + width_ns)
    at = send_at_ns(known, half_rtt_ns, not_before_ns)
    assert not_before_ns <= at < not_before_ns + NS
    assert (at + half_rtt_ns + known.mid_ns) % NS == 0


def test_the_round_trip_estimate_skips_the_handshake():
    assert rtt_estimate_ns([50_000_000, 1_000, 3_000, 2_000]) == 2_000
    assert rtt_estimate_ns([7_000]) == 7_000


def test_a_late_probe_may_leave_an_eighth_of_the_interval_late():
    assert Interval(0, 80_000_000).max_late_ns() == 10_000_000
    assert Interval(0, 800).max_late_ns() == 1_000_000
