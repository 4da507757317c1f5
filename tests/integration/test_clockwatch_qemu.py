"""clockwatch against a real kernel whose clock really steps: Debian's kernel in a throw-away QEMU (TCG) guest.

Only the guest's clock is set (its own kernel in a software-emulated CPU; QEMU runs under ``setpriv -sys_time`` on
the host, and the guest script refuses to run unless its kernel command line carries the run's token — every line
that sets a clock goes through the guard's ``guest_only``). The host check around the run — CLOCK_REALTIME −
CLOCK_MONOTONIC unchanged to 1 ms — is the proof that the host clock was never touched.

In one boot (a boot costs ~2 s under TCG, Python start-up in the guest ~0.5 s) the guest:

1. slews its clock at the fastest rate Linux allows (ADJ_TICK +10 % = 100 000 ppm) for 1.5 s: nothing is reported
   (T19), and the boot epoch barely moves, because the kernel slews BOOTTIME with REALTIME;
2. steps −3600 s then +7200 s with clock_settime: exactly one rollback and one forward_jump, detected by the
   timerfd, each within 50 ms (T16, T17);
3. sets the clock to 1.5 s before a UTC midnight and arms a leap-second insertion (STA_INS): the kernel's
   23:59:60 is reported as ``leap``, not as a rollback (T20).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import realprogs

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.real

# Runs inside the guest as root, behind realprogs' guard (it refuses outside the guest and defines guest_only).
# Keep imports to the stdlib and timeguard.watch.clockwatch: every import costs ~10x more under TCG.
GUEST_SCRIPT = r"""
import ctypes
import json
import sys
import threading
import time

sys.path.insert(0, __TIMEGUARD_REPO__)
from timeguard.watch.clockwatch import ClockSetWatcher, StepDetector, read_clocks

ADJ_STATUS, ADJ_TICK = 0x0010, 0x4000
STA_INS, STA_DEL = 0x0010, 0x0020


class Timex(ctypes.Structure):  # struct timex, <sys/timex.h>
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    ]


libc = ctypes.CDLL(None, use_errno=True)


def read_timex():
    tx = Timex()  # modes 0: only reads the kernel's clock state
    if libc.adjtimex(ctypes.byref(tx)) < 0:
        raise OSError(ctypes.get_errno(), "adjtimex")
    return tx


def guest_adjtimex(modes, **fields):  # sets the guest kernel's clock state: only through guest_only
    tx = Timex()
    tx.modes = modes
    for name, value in fields.items():
        setattr(tx, name, value)
    if guest_only(libc.adjtimex, ctypes.byref(tx)) < 0:
        raise OSError(ctypes.get_errno(), "adjtimex")
    return tx


def leap_pending():
    status = read_timex().status
    return "insert" if status & STA_INS else "delete" if status & STA_DEL else None


def mono():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def step_guest_clock(delta_s):
    t0 = mono()
    target_ns = time.clock_gettime_ns(time.CLOCK_REALTIME) + int(delta_s * 1e9)
    guest_only(time.clock_settime_ns, time.CLOCK_REALTIME, target_ns)  # the guest's clock only: guarded
    return t0, mono()


phase = "start"
found = []
stop = threading.Event()
detector = StepDetector(ClockSetWatcher(), leap_pending=leap_pending)


def loop():
    while not stop.is_set():
        for s in detector.wait(0.2):
            found.append({"phase": phase, "kind": str(s.kind), "step_s": s.step_s, "detected_by": s.detected_by,
                          "monotonic_s": s.monotonic_s, "describe": s.describe()})


thread = threading.Thread(target=loop, daemon=True)
thread.start()
time.sleep(0.3)
marks = {}

# 1. The fastest slew Linux can do: 11000 us per 10000-us tick (+10 %) for 1.5 s.
phase = "slew"
raw0, r0 = time.clock_gettime(time.CLOCK_MONOTONIC_RAW), read_clocks()
guest_adjtimex(ADJ_TICK, tick=11000)
time.sleep(1.5)
guest_adjtimex(ADJ_TICK, tick=10000)
raw1, r1 = time.clock_gettime(time.CLOCK_MONOTONIC_RAW), read_clocks()
slew = {"realtime_minus_raw_s": (r1.realtime_s - r0.realtime_s) - (raw1 - raw0),
        "epoch_moved_s": r1.boot_epoch_s - r0.boot_epoch_s}
time.sleep(0.3)

# 2. Steps.
phase = "steps"
marks["rollback"] = step_guest_clock(-3600)
time.sleep(0.5)
marks["forward"] = step_guest_clock(+7200)
time.sleep(0.5)

# 3. Leap second: 1.5 s before the next UTC midnight, then STA_INS (clock_settime clears the NTP state, so after).
phase = "leap-setup"
now = time.clock_gettime(time.CLOCK_REALTIME)
midnight = (int(now) // 86400 + 1) * 86400
step_guest_clock(midnight - 1.5 - now)
guest_adjtimex(ADJ_STATUS, status=read_timex().status | STA_INS)
leap_armed = leap_pending()
time.sleep(0.2)
phase = "leap"
marks["leap"] = (mono(), mono())
time.sleep(2.3)  # the kernel inserts 23:59:60 when its clock reaches midnight, ~1.3 s from here

stop.set()
thread.join(5)
print("RESULT " + json.dumps({
    "found": found, "marks": marks, "slew": slew, "leap_armed": leap_armed,
    "glitches_dropped": detector.glitches_dropped, "read_errors": detector.read_errors,
    "last_error": detector.last_error, "watcher_backend": detector.watcher.backend,
}))
"""




def test_real_steps_in_qemu_guest_are_detected_by_timerfd_within_50ms(
    qemu_guest: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    # The guest runs the host's real interpreter (no venv: stdlib only, fast start) via the read-only 9p share.
    python = os.path.realpath(sys.executable)

    host_before = realprogs.host_realtime_minus_monotonic_s()
    t0 = time.monotonic()
    proc = qemu_guest(GUEST_SCRIPT.replace("__TIMEGUARD_REPO__", repr(str(REPO))), 180, python=python)
    run_s = time.monotonic() - t0
    host_after = realprogs.host_realtime_minus_monotonic_s()

    # First: the host clock was never touched.
    assert abs(host_after - host_before) < 1e-3, (host_before, host_after)

    result_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and result_lines, f"guest failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}"
    result = json.loads(result_lines[-1].removeprefix("RESULT "))
    found = result["found"]
    print(f"\nQEMU guest run {run_s:.2f} s, watcher backend {result['watcher_backend']}")
    for item in found:
        print(f"  [{item['phase']}] {item['describe']}")

    # 1. The maximal slew really happened, and was never a step.
    slew = result["slew"]
    print(
        f"  slew: realtime − raw {slew['realtime_minus_raw_s'] * 1e3:+.1f} ms, "
        f"boot epoch moved {slew['epoch_moved_s'] * 1e6:+.1f} µs"
    )
    assert slew["realtime_minus_raw_s"] > 0.05, "ADJ_TICK +10 % did not slew the guest clock"
    assert [f for f in found if f["phase"] in ("start", "slew")] == []

    # 2. Exactly one rollback of −3600 s and one forward jump of +7200 s, from the timerfd, within 50 ms.
    steps = [f for f in found if f["phase"] == "steps"]
    assert [(f["kind"], f["detected_by"]) for f in steps] == [("rollback", "timerfd"), ("forward_jump", "timerfd")]
    # The guest sets "now − 3600 s" from a reading taken a moment before clock_settime: on an emulated CPU that is
    # busy, the moment can be ~15 ms, and the real step is that much larger (seen: −3600.0139 s). 50 ms, as below.
    assert steps[0]["step_s"] == pytest.approx(-3600, abs=0.05)
    assert steps[1]["step_s"] == pytest.approx(7200, abs=0.05)
    for f, mark in zip(steps, ("rollback", "forward"), strict=True):
        before_s, after_s = result["marks"][mark]
        latency_s = f["monotonic_s"] - before_s  # from just before clock_settime to the detector's reading
        print(
            f"  {mark}: detected {latency_s * 1e3:.2f} ms after the step (clock_settime took "
            f"{(after_s - before_s) * 1e3:.2f} ms)"
        )
        assert 0 <= latency_s < 0.05

    # 3. The kernel's leap second insertion is a leap, not a rollback.
    assert result["leap_armed"] == "insert"
    leaps = [f for f in found if f["phase"] == "leap"]
    assert [f["kind"] for f in leaps] == ["leap"], leaps
    assert leaps[0]["step_s"] == pytest.approx(-1.0, abs=0.05)
    print(f"  leap second detected by {leaps[0]['detected_by']}")
    assert result["glitches_dropped"] == 0
    assert result["read_errors"] == 0, result["last_error"]


# The real `date -s` an operator types, against the real daemon: `timeguard run` (the venv's interpreter) in the
# guest with three NTP servers on the guest's own loopback, its journal in the guest's tmpfs. Behind the guard too.
GUEST_DATE_S = r"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, __TIMEGUARD_REPO__)
from tests.support.fake_ntp import FakeNTPServer
from timeguard.events import EventKind
from timeguard.store.journal import Journal, JournalError

work = os.path.join(os.environ["TMPDIR"], "timeguard")
os.makedirs(work)
servers = [FakeNTPServer() for _ in range(3)]
config = os.path.join(work, "timeguard.yaml")
with open(config, "w") as f:  # JSON is YAML
    json.dump({
        "state_dir": os.path.join(work, "state"),
        "sources": {"ntp": [{"host": "127.0.0.1", "port": s.port} for s in servers], "http": []},
        "timeout_s": 3,
        "daemon": {"ntp_interval_s": 15},
        "logging": {"format": "json", "level": "debug"},
    }, f)
log_path = os.path.join(work, "daemon.log")
log = open(log_path, "w")
started = time.monotonic()
daemon = subprocess.Popen([sys.executable, "-m", "timeguard", "run", "--config", config],
                          stdout=log, stderr=subprocess.STDOUT, cwd=__TIMEGUARD_REPO__)
result = {}


def finish(failure=None):
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    result.update(failure=failure, daemon_rc=daemon.returncode, events=journal(lambda j: j.events(), []))
    if failure:
        with open(log_path) as f:
            result["log_tail"] = f.read()[-4000:]
    print("RESULT " + json.dumps(result, default=lambda e: e.to_dict()))
    sys.exit(0)


def journal(query, empty):
    try:
        with Journal(os.path.join(work, "state", "journal.sqlite"), readonly=True) as j:
            return query(j)
    except JournalError:  # not created (and migrated) yet
        return empty


def wait(what, probe, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if daemon.poll() is not None:
            finish(f"the daemon exited ({daemon.returncode}) while waiting for {what}")
        time.sleep(0.05)
    finish(f"timed out after {timeout_s} s waiting for {what}")


wait("the daemon's first check", lambda: journal(lambda j: j.check_count(), 0) >= 1, 90)
result["ready_s"] = time.monotonic() - started
time.sleep(0.5)
target = time.time() - 3600
result["before_monotonic_s"] = time.monotonic()
date = guest_only(subprocess.run, ["date", "-u", "-s", f"@{target:.6f}"], capture_output=True, text=True)  # guarded
result["date"] = {"rc": date.returncode, "stdout": date.stdout.strip(), "stderr": date.stderr.strip(),
                  "target": target}
wait("the rollback event", lambda: journal(lambda j: j.events(kinds=[EventKind.ROLLBACK]), []), 15)
time.sleep(1.5)  # a second or spurious event would be in the journal by now
finish()
"""


def test_date_s_in_qemu_guest_is_one_rollback_in_the_daemon_journal(
    qemu_guest: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    host_before = realprogs.host_realtime_minus_monotonic_s()
    t0 = time.monotonic()
    proc = qemu_guest(GUEST_DATE_S.replace("__TIMEGUARD_REPO__", repr(str(REPO))), 240)
    run_s = time.monotonic() - t0
    host_after = realprogs.host_realtime_minus_monotonic_s()
    assert abs(host_after - host_before) < 1e-3, (host_before, host_after)  # the host clock was never touched

    result_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and result_lines, f"guest failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}"
    result = json.loads(result_lines[-1].removeprefix("RESULT "))
    assert result["failure"] is None, f"{result['failure']}\n{result.get('log_tail', '')}"
    date = result["date"]
    assert date["rc"] == 0, date  # coreutils' date really set the (guest) clock
    events = result["events"]
    steps = [e for e in events if e["kind"] in ("rollback", "forward_jump", "rollback_while_down")]
    rollback = steps[0]
    latency_s = rollback["monotonic_s"] - result["before_monotonic_s"]  # includes starting `date` under TCG
    print(f"\nQEMU guest run {run_s:.1f} s (daemon ready after {result['ready_s']:.1f} s); `date -s` printed "
          f"{date['stdout']!r}; the daemon recorded a rollback of {rollback['step_s']:+.3f} s, detected by "
          f"{rollback['detail'].get('detected_by')}, {latency_s * 1e3:.0f} ms after `date` was started")

    assert [e["kind"] for e in steps] == ["rollback"], steps  # exactly one step event, and it is a rollback
    assert rollback["step_s"] == pytest.approx(-3600, abs=0.5)
    assert rollback["wall_before_s"] - rollback["wall_time_s"] == pytest.approx(3600, abs=0.5)
    assert rollback["wall_time_s"] == pytest.approx(date["target"], abs=1.0)
    assert rollback["detail"]["detected_by"] == "timerfd"
    assert 0 <= latency_s < 1.0
    assert result["daemon_rc"] == 0  # and it stopped cleanly on SIGTERM
