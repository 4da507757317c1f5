"""The forward-jump guard in the daemon: carries out :func:`timeguard.repair.guard.decide` for every repair hook.

A worker thread of its own (stop and start commands take seconds; detection never waits) looks again whenever the
recorder notes a step or a verdict (:meth:`GuardRunner.poke`), and every :data:`IDLE_LOOK_S` besides. It reads the
verdict re-based to the clock *now* — right after a forward step the samples taken before it already say how far
ahead the host is — and for each repair hook:

* ``stop``: writes the ``guard:<hook>`` note, runs the owner's stop command, raises ``future_state_accruing``;
* ``restore``: runs the hook itself through the dispatcher (``run_now``: isolated, timed, recorded as a hook run
  of the incident), which repairs with the owner already stopped and starts it; then drops the note. When a run
  of the hook is already queued — the rollback that corrected the clock is journalled and dispatched before the
  guard is poked — that run does it (the hook knows: ``guard_held``) and the guard only drops the note after;
* ``release``: a note whose hook is gone, or no longer ``guard: stop``, while the clock is not right: starts the
  scheduler unrepaired with the note's start command, logs an error and raises ``future_state_accruing`` saying so;
* ``alert``: raises ``future_state_accruing`` (once per episode) for the ``guard: alert`` hooks.

One ``future_state_accruing`` event per look names every store it concerns (``detail["stores"]``); an episode —
from the first proof that the host is ahead until a scheduler is started again — is one incident.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from timeguard.events import Event, EventKind, new_id
from timeguard.hooks.api import HookStatus
from timeguard.repair.guard import Act, GuardState, after, decide, host_ahead_s
from timeguard.repair.hook import RepairHook
from timeguard.repair.target import RepairError, run_owner_command
from timeguard.store.journal import GuardNote, JournalError
from timeguard.watch.clockwatch import ClockReading

if TYPE_CHECKING:
    from timeguard.daemon.recorder import Recorder
    from timeguard.hooks.dispatch import Dispatcher

IDLE_LOOK_S = 5.0  # a look without a poke: a slewed clock changes no step, and verdicts come per round
RETRY_S = 30.0  # a failed stop, restore or release is tried again after this long (monotonic)
START_TIMEOUT_S = 60.0  # a released scheduler's start command, when its hook (and timeout_s) is gone


class GuardRunner:
    def __init__(self, recorder: Recorder, *, clock: Callable[[], ClockReading],
                 trusted_now: Callable[[], float | None], verdict: Callable[[], Mapping[str, Any] | None],
                 log: Any) -> None:
        self._recorder, self._clock, self._trusted_now, self._verdict, self._log = (recorder, clock, trusted_now,
                                                                                     verdict, log)
        self._dispatcher: Dispatcher | None = None
        self._states: dict[str, GuardState] = {}
        # hook → (the act that failed, monotonic time before which it is not tried again); another act — a
        # reload's release after a failed restore — is not held back by it, and a reload clears them all
        self._retry_at: dict[str, tuple[Act, float]] = {}
        self._incident: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one look at a time (the worker; tests call look() directly)
        self._thread: threading.Thread | None = None
        try:
            notes = recorder.journal.guards()
        except JournalError as exc:
            recorder.failed(exc, "guard notes")
            notes = {}
        self._notes: dict[str, GuardNote] = dict(notes)
        for name in notes:
            self._states[name] = GuardState.from_note()
        if notes:
            self._incident = next(iter(notes.values())).incident_id
            log.warning("guard_scheduler_stopped", hooks=sorted(notes),
                        note="stopped by the guard before this start: repaired and started once the clock is right")

    # ------------------------------------------------------------------------------------------ control

    def configure(self, dispatcher: Dispatcher) -> None:
        """The hooks now (start-up, reload): a hook whose scheduler the guard stopped knows it (``guard_held``).
        Called by the detection loop (a reload's apply): it never waits for a look in progress, which may be
        running a repair; the next look uses the new hooks."""
        for hook in self._guarded(dispatcher).values():
            hook.guard_held = hook.name in self._notes
        self._dispatcher = dispatcher
        self._retry_at.clear()  # the operator's new configuration is carried out now, not after a backoff
        self.poke()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="guard", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A step or a verdict happened: look now."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def stopped_hooks(self) -> list[str]:
        return sorted(self._notes)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(IDLE_LOOK_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.look()
            except Exception:  # noqa: BLE001 - the guard's bug must not end its thread
                self._log.exception("guard_failed")

    @staticmethod
    def _guarded(dispatcher: Dispatcher | None) -> dict[str, RepairHook]:
        if dispatcher is None:
            return {}
        return {h.name: h.hook for h in dispatcher.hooks if isinstance(h.hook, RepairHook)}

    # --------------------------------------------------------------------------------------------- look

    def look(self) -> list[tuple[str, Act]]:
        """Decide and act for every repair hook and every stopped scheduler; returns what was done (tests)."""
        with self._lock:
            dispatcher = self._dispatcher
            if dispatcher is None:
                return []
            hooks = self._guarded(dispatcher)
            if not hooks and not self._notes:
                return []  # no repair hook: no verdict to form (idle CPU)
            dry = {h.name: h.spec.dry_run for h in dispatcher.hooks}
            verdict = self._verdict()
            done: list[tuple[str, Act]] = []
            stores: list[dict[str, Any]] = []
            for name in sorted(set(hooks) | set(self._notes)):
                hook = hooks.get(name)
                state = self._states.get(name, GuardState())
                tolerance = hook.max_offset_s if hook is not None else 1.0
                act = decide(hook.guard if hook is not None else None, state, verdict, tolerance,
                             dry_run=dry.get(name, False))
                if act is Act.NONE:
                    self._states[name] = after(act, state, verdict, tolerance)
                    continue
                failed, retry_at = self._retry_at.get(name, (act, 0.0))
                if failed is act and self._clock().monotonic_s < retry_at:
                    continue
                if act is Act.RESTORE and dispatcher.busy(name):
                    continue  # a repair run is queued (the rollback's): it repairs and starts; looked at again after
                ok, store = self._act(act, name, hook, verdict, dispatcher, again=state.stopped)
                self._states[name] = after(act, state, verdict, tolerance, done=ok)
                if ok:
                    self._retry_at.pop(name, None)
                else:
                    self._retry_at[name] = (act, self._clock().monotonic_s + RETRY_S)
                done.append((name, act))
                if store is not None:
                    stores.append(store)
            if stores:
                self._announce(stores, verdict)
            if not self._notes and not any(s.alerted for s in self._states.values()):
                self._incident = None  # the episode is over: the next one is a new incident
            return done

    def _act(self, act: Act, name: str, hook: RepairHook | None, verdict: Mapping[str, Any] | None,
             dispatcher: Dispatcher, *, again: bool) -> tuple[bool, dict[str, Any] | None]:
        """Carry out ``act``; (succeeded, the store's line in the event or None). ``again``: a stop repeated
        (after a failure, or to be sure after a restart) is announced only if it fails."""
        if act is Act.ALERT:
            assert hook is not None
            return True, self._store(hook, "alerting", verdict)
        if act is Act.STOP:
            assert hook is not None
            ok, store = self._stop(hook, verdict)
            return ok, None if ok and again else store
        if act is Act.RESTORE:
            assert hook is not None
            return self._restore(hook, dispatcher)
        return self._release(name, hook)

    def _store(self, hook: RepairHook, action: str, verdict: Mapping[str, Any] | None, **extra: Any
               ) -> dict[str, Any]:
        return {"hook": hook.name, "target": hook.kind.name, "where": _where(hook), "guard": hook.guard.value,
                "action": action, **extra}

    def _stop(self, hook: RepairHook, verdict: Mapping[str, Any] | None) -> tuple[bool, dict[str, Any]]:
        now = self._clock()
        ahead = host_ahead_s(verdict, hook.max_offset_s) or 0.0
        if hook.name not in self._notes:
            note = GuardNote(hook=hook.name, target=hook.kind.name, where=_where(hook),
                             stopped_wall_s=now.realtime_s, trusted_s=self._trusted_now(), ahead_s=ahead,
                             incident_id=self._episode(), start_command=hook.start_command)
            try:  # first: a crash between the note and the stop errs towards "repair and start it"
                self._recorder.journal.set_guard(note)
            except JournalError as exc:
                self._recorder.failed(exc, "guard note")
            self._notes[hook.name] = note
        try:
            hook.guard_stop()
        except RepairError as exc:
            self._log.error("guard_stop_failed", hook=hook.name, error=str(exc),
                            note="the scheduler may still be running and stamping the future; tried again")
            return False, self._store(hook, "stop_failed", verdict, error=str(exc))
        self._log.warning("guard_stopped_scheduler", hook=hook.name, target=hook.kind.name, ahead_s=round(ahead, 3),
                          note="repaired and started once the clock is right")
        return True, self._store(hook, "stopped", verdict)

    def _restore(self, hook: RepairHook, dispatcher: Dispatcher) -> tuple[bool, dict[str, Any] | None]:
        """The hook's own repair with the owner stopped, then its start (RepairHook.handle), run and recorded by
        the dispatcher for the episode's incident (its event journalled, not dispatched: the announcement is)."""
        name = hook.name
        note = self._notes.get(name)
        now = self._clock()
        verdict = self._verdict()
        event = Event(kind=EventKind.FUTURE_STATE_ACCRUING, incident_id=note.incident_id if note else self._episode(),
                      wall_time_s=now.realtime_s, monotonic_s=now.monotonic_s, boot_id=self._recorder.boot_id,
                      host=socket.gethostname(), trusted_time_s=self._trusted_now(),
                      verdict=dict(verdict) if verdict else None, detail={"guard_action": "restore", "hook": name})
        try:
            self._recorder.journal.record_event(event)
        except JournalError as exc:
            self._recorder.failed(exc, "guard restore event")
        run = dispatcher.run_now(name, event)
        if hook.guard_held:  # not repaired: a refusal (the evidence is not there yet) is no failure, and no page
            failed = run.status is HookStatus.FAILED
            (self._log.error if failed else self._log.warning)(
                "guard_restore_failed" if failed else "guard_restore_deferred", hook=name, status=run.status.value,
                summary=run.summary, note=f"the scheduler stays stopped; tried again in {RETRY_S:g} s")
            return False, None
        self._drop(name)
        self._log.info("guard_started_scheduler", hook=name, status=run.status.value, summary=run.summary)
        return True, self._store(hook, "started", verdict, repair=run.status.value, summary=run.summary)

    def _release(self, name: str, hook: RepairHook | None) -> tuple[bool, dict[str, Any]]:
        """The hook is gone or no longer stops: start its scheduler unrepaired, and say so loudly."""
        note = self._notes.get(name)
        why = "its hook was removed" if hook is None else f"its hook is now guard: {hook.guard.value}"
        try:
            if hook is not None:
                hook.guard_release()
            elif note is not None and note.start_command:
                run_owner_command(note.start_command, "start_command", timeout_s=START_TIMEOUT_S)
            else:
                raise RepairError("no start command recorded")
        except RepairError as exc:
            self._log.error("guard_release_failed", hook=name, why=why, error=str(exc),
                            note="the scheduler the guard stopped is STILL STOPPED: start it by hand")
            return False, {"hook": name, "target": note.target if note else None,
                           "where": note.where if note else None, "action": "start_failed", "why": why,
                           "error": str(exc)}
        self._drop(name)
        self._log.error("guard_released_scheduler", hook=name, why=why,
                        note="started WITHOUT a repair while the clock is not confirmed right: it may stamp the "
                             "future again; run `timeguard repair` once the clock is right")
        return True, {"hook": name, "target": note.target if note else None, "where": note.where if note else None,
                      "action": "released", "why": why}

    def _drop(self, name: str) -> None:
        self._notes.pop(name, None)
        try:
            self._recorder.journal.clear_guard(name)
        except JournalError as exc:
            self._recorder.failed(exc, "guard note")

    def _episode(self) -> str:
        if self._incident is None:
            self._incident = new_id()
        return self._incident

    def _announce(self, stores: list[dict[str, Any]], verdict: Mapping[str, Any] | None) -> None:
        now = self._clock()
        ahead = [a for s in stores if (h := self._guarded(self._dispatcher).get(str(s["hook"]))) is not None
                 and (a := host_ahead_s(verdict, h.max_offset_s)) is not None]
        event = Event(kind=EventKind.FUTURE_STATE_ACCRUING, incident_id=self._episode(), wall_time_s=now.realtime_s,
                      monotonic_s=now.monotonic_s, boot_id=self._recorder.boot_id, host=socket.gethostname(),
                      trusted_time_s=self._trusted_now(), verdict=dict(verdict) if verdict else None,
                      detail={"stores": stores, "ahead_s": max(ahead) if ahead else None})
        self._log.warning("future_state_accruing", incident=event.incident_id,
                          stores=[f"{s['hook']}:{s['action']}" for s in stores])
        self._recorder.event(event)


def _where(hook: RepairHook) -> str:
    """The hook's store, for a person (opening a target connects nothing yet; a failure names the kind)."""
    try:
        target = hook.target()
    except Exception:  # noqa: BLE001 - only a label
        return hook.kind.name
    try:
        return str(target.where)
    finally:
        target.close()
