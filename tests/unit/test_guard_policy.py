"""The forward-jump guard's policy (timeguard/repair/guard.py), over any verdicts and any configuration changes:
it never stops a scheduler without evidence that the host is ahead, it always starts one it stopped once the
clock is right (repaired) or the hook no longer stops (released), and a restart changes none of it."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from timeguard.repair.evidence import evidence_problem
from timeguard.repair.guard import Act, GuardMode, GuardState, after, clock_right, decide, host_ahead_s

DAY = 86400.0
TOL = 1.0
RIGHT = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}
AHEAD = {"status": "CRITICAL", "offset_s": -180 * DAY, "offset_lo_s": -180 * DAY - 0.2,
         "offset_hi_s": -180 * DAY + 0.2, "ntp_http_agree": True}


def verdict_from(offset: float, half_width: float, agree: bool | None, status: str,
                 witnesses: list[str] | None = None) -> dict[str, object]:
    """A verdict summary; without ``witnesses`` one from before trust classes (judged by ``ntp_http_agree``)."""
    verdict = {"status": status, "offset_s": offset, "offset_lo_s": offset - half_width,
               "offset_hi_s": offset + half_width, "ntp_http_agree": agree}
    return verdict if witnesses is None else {**verdict, "witnesses": witnesses}


offsets = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([-180 * DAY, -3600.0, -1.5, -1.0, -0.5, 0.0, 0.5, 3 * DAY]))
verdicts = st.one_of(
    st.none(),
    st.builds(verdict_from, offsets, st.sampled_from([0.0, 0.1, 0.6, 2.0, math.inf]),
              st.sampled_from([True, False, None]),
              st.sampled_from(["OK", "WARNING", "CRITICAL", "SOURCES_INCONSISTENT", "NO_MAJORITY", "UNKNOWN"]),
              st.none() | st.lists(st.sampled_from(["ntp", "http", "nts:a.org", "nts:b.org"]), max_size=3)),
)
modes = st.sampled_from([GuardMode.STOP, GuardMode.ALERT, None])


def proven_ahead(verdict: dict[str, object] | None, tolerance: float) -> bool:
    """The rule, written out independently: usable, two independent witnesses of which one is authenticated (before
    trust classes: both classes agree), the whole interval beyond −tolerance."""
    if verdict is None:
        return False
    witnesses = verdict.get("witnesses")
    if verdict["ntp_http_agree"] is False or (witnesses is None and verdict["ntp_http_agree"] is not True):
        return False
    if witnesses is not None and (len(set(witnesses)) < 2 or set(witnesses) == {"ntp"}):  # type: ignore[arg-type]
        return False
    if verdict["status"] not in ("OK", "WARNING", "CRITICAL"):
        return False
    lo, off, hi = (float(verdict[k]) for k in ("offset_lo_s", "offset_s", "offset_hi_s"))  # type: ignore[arg-type]
    return all(math.isfinite(v) for v in (lo, off, hi)) and lo <= off <= hi and hi < -tolerance


@settings(max_examples=400, deadline=None)
@given(verdict=verdicts, mode=modes, stopped=st.booleans(), alerted=st.booleans(), dry=st.booleans())
def test_never_stops_without_evidence_that_the_host_is_ahead(verdict, mode, stopped, alerted, dry):
    act = decide(mode, GuardState(stopped, alerted), verdict, TOL, dry_run=dry)
    if act is Act.STOP:
        assert proven_ahead(verdict, TOL) and mode is GuardMode.STOP and not dry and not stopped
    if act is Act.ALERT:
        assert proven_ahead(verdict, TOL) and not alerted and not stopped
    if act is Act.RESTORE:  # a repair: the repair's own evidence rule holds
        assert stopped and mode is not None and evidence_problem(verdict, TOL) is None
    if proven_ahead(verdict, TOL):
        assert evidence_problem(verdict, TOL) is not None  # ahead and right never both hold


@settings(max_examples=300, deadline=None)
@given(verdict=verdicts)
def test_a_spoofed_or_unconfirmed_verdict_stops_nothing(verdict):
    if verdict is None:
        return
    # the classes disagree (a lying NTP majority), or only one class answered; with trust classes: only plain NTP
    # vouches, or one NTS operator alone
    for agree, witnesses in ((False, ["ntp"]), (None, ["ntp"]), (None, ["nts:a.org", "nts:a.org"])):
        spoofed = {**verdict, "ntp_http_agree": agree}
        if "witnesses" in verdict:
            spoofed["witnesses"] = witnesses
        assert host_ahead_s(spoofed, TOL) is None
        assert decide(GuardMode.STOP, GuardState(), spoofed, TOL) is Act.NONE
        assert not clock_right(spoofed, TOL)  # nor does it start a stopped one, unrepaired or repaired
        assert decide(GuardMode.STOP, GuardState(stopped=True), spoofed, TOL) is Act.NONE


def test_host_ahead_needs_every_point_beyond_the_tolerance():
    assert host_ahead_s(AHEAD, TOL) == 180 * DAY - 0.2
    straddling = verdict_from(-1.2, 0.5, True, "CRITICAL")  # [−1.7, −0.7]: −0.7 is within 1 s
    assert host_ahead_s(straddling, TOL) is None
    assert host_ahead_s(verdict_from(-3 * DAY, 0.1, True, "CRITICAL"), TOL) is not None
    assert host_ahead_s(verdict_from(3 * DAY, 0.1, True, "CRITICAL"), TOL) is None  # behind: no future stamps
    assert host_ahead_s(verdict_from(-1.5, 0.1, True, "CRITICAL"), 5.0) is None  # the hook's own tolerance
    assert host_ahead_s({**AHEAD, "offset_hi_s": math.nan}, TOL) is None


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(verdicts, modes, st.booleans(), st.booleans()), min_size=1, max_size=25))
def test_over_any_history_a_stopped_scheduler_is_started_and_restarts_change_nothing(steps):
    """Each step: a verdict, the hook's mode then (None: removed), whether the act succeeded, whether the daemon
    restarted before it (the state rebuilt from the journal's note: stopped ⇒ GuardState(True, True))."""
    state = GuardState()
    for verdict, mode, succeeded, restarted in steps:
        if restarted:
            state = GuardState.from_note() if state.stopped else GuardState()
        act = decide(mode, state, verdict, TOL)
        if state.stopped:
            # never left stopped silently: removed or set to alert → released; clock right → restored
            if mode is None or mode is GuardMode.ALERT:
                assert act in (Act.RELEASE, Act.RESTORE)
            elif clock_right(verdict, TOL):
                assert act is Act.RESTORE
            elif not state.confirmed and proven_ahead(verdict, TOL):
                assert act is Act.STOP  # a stop that failed or may not have run (restart): made sure of
            else:
                assert act is Act.NONE  # the clock never came right: it stays stopped
        new = after(act, state, verdict, TOL, done=succeeded)
        if act is Act.STOP:
            assert new.stopped  # noted before the stop command: stopped even if the command failed
        if act in (Act.RESTORE, Act.RELEASE):
            assert new.stopped is (not succeeded)  # a failed start is tried again
        if act is Act.NONE:
            assert new.stopped == state.stopped
        # the same decision again (a second look, or right after a restart) does not act twice
        if act is Act.ALERT or (act in (Act.STOP, Act.RESTORE, Act.RELEASE) and succeeded):
            assert decide(mode, new, verdict, TOL) is Act.NONE
        if act is Act.STOP and not succeeded:
            assert decide(mode, new, verdict, TOL) is Act.STOP  # retried (the daemon spaces the retries)
        state = new


def test_a_forward_step_alone_is_no_evidence_the_sources_decide():
    """A forward step that corrected a clock 3 days behind: the re-based verdict says the host is now right."""
    corrected = verdict_from(0.0, 0.05, True, "OK")
    assert decide(GuardMode.STOP, GuardState(), corrected, TOL) is Act.NONE
    assert decide(GuardMode.STOP, GuardState(), AHEAD, TOL) is Act.STOP
    assert decide(GuardMode.ALERT, GuardState(), AHEAD, TOL) is Act.ALERT
    assert decide(GuardMode.ALERT, GuardState(alerted=True), AHEAD, TOL) is Act.NONE  # once per episode
    assert after(Act.NONE, GuardState(alerted=True), RIGHT, TOL) == GuardState()  # the episode ends
    assert decide(GuardMode.STOP, GuardState(), AHEAD, TOL, dry_run=True) is Act.ALERT  # dry run: alert only
