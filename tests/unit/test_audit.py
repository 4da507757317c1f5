"""The audit scheduler (hooks/audit.py), over any sequence of audit outcomes: when the next audit comes, which
incident a finding belongs to, who hears of it, and what the journal keeps."""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_agent import _Alert, _ScriptedAuditor, reading
from timeguard import logs
from timeguard.config import HookSpec
from timeguard.events import EventKind
from timeguard.hooks import dispatch as dispatch_mod
from timeguard.hooks.api import AuditOutcome, AuditResult
from timeguard.hooks.audit import AuditScheduler
from timeguard.hooks.dispatch import Dispatcher
from timeguard.store.journal import Journal

OUTCOMES = {
    "clean": AuditResult(AuditOutcome.CLEAN, "nothing"),
    "found": AuditResult(AuditOutcome.FOUND, "2 in the future", {"target": "db"}),
    "skipped": AuditResult(AuditOutcome.SKIPPED, "clock not trusted"),
    "error": RuntimeError("cannot connect"),
}


@settings(max_examples=40, deadline=None)
@given(outcomes=st.lists(st.sampled_from(sorted(OUTCOMES)), min_size=1, max_size=12),
       retry_s=st.sampled_from([1.0, 30.0, 45.0]), interval_s=st.sampled_from([10.0, 600.0, 3600.0]))
def test_back_off_doubles_to_the_interval_and_one_incident_lasts_until_clean(outcomes, retry_s, interval_s):
    clock = {"mono": 100.0}
    recorded = []
    specs = (HookSpec("audit", "repair", None, 5.0, False, {}), HookSpec("alert", "ops", None, 5.0, False, {}))
    with tempfile.TemporaryDirectory() as state, \
            mock.patch.object(dispatch_mod, "find_type",
                              lambda name: _ScriptedAuditor if name == "audit" else _Alert):
        journal = Journal.in_state_dir(Path(state))
        dispatcher = Dispatcher(specs, recorder=journal, trusted_now=lambda: None,
                                verdict=lambda: None, hostname="h", log=logs.get())
        scheduler = AuditScheduler(retry_s=retry_s, interval_s=interval_s,
                                   clock=lambda: reading(1e9 + clock["mono"], clock["mono"]), boot_id="b",
                                   trusted_now=lambda: None, verdict=lambda: None,
                                   record=lambda event, only: recorded.append((event, only)), journal=journal,
                                   journal_failed=lambda exc, what: None, log=logs.get())
        scheduler.configure(dispatcher.auditors())
        assert dispatcher.auditors() == ["repair"]
        _ScriptedAuditor.script[:] = [OUTCOMES[o] for o in outcomes]
        scheduler.tick(dispatcher, sources_answered=False)
        assert len(_ScriptedAuditor.script) == len(outcomes)  # nothing before every source class answered

        backoff, incident, findings = retry_s, None, 0
        for outcome in outcomes:
            due_s = scheduler.states["repair"].next_due_s
            before = len(_ScriptedAuditor.script)
            clock["mono"] = due_s - 0.001
            scheduler.tick(dispatcher, sources_answered=True)
            assert len(_ScriptedAuditor.script) == before  # not due yet: nothing runs
            clock["mono"] = due_s
            scheduler.tick(dispatcher, sources_answered=True)
            assert len(_ScriptedAuditor.script) == before - 1  # due: exactly one audit
            delay = interval_s if outcome == "clean" else backoff
            backoff = retry_s if outcome == "clean" else min(backoff * 2, interval_s)
            assert scheduler.states["repair"].next_due_s == clock["mono"] + delay
            assert journal.meta()["audit:repair"]["outcome"] == outcome
            assert journal.meta()["audit:repair"]["next_in_s"] == delay
            if outcome == "found":
                findings += 1
                event, only = recorded[-1]
                assert event.kind is EventKind.FUTURE_STATE_FOUND and event.detail["finding"] == findings
                assert only == (None if findings == 1 else "repair")  # the first to every hook, repeats to the finder
                assert incident is None or event.incident_id == incident
                incident = event.incident_id
            elif outcome == "clean":
                incident, findings = None, 0
                assert scheduler.states["repair"].incident is None
        assert len(recorded) == outcomes.count("found")
        assert sum(scheduler.future_state_found.values()) == outcomes.count("found")
        journal.close()
