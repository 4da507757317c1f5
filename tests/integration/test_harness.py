"""Proof that the real-program harness (tests/support/realprogs/) does what every integration test relies on.

Only plain clients here (ntplib, requests, a child Python, ctypes in a QEMU guest), never timeguard code: if one of
these fails, the harness is broken, not timeguard.
"""

from __future__ import annotations

import json
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import ntplib
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from tests.support import realprogs
from tests.support.realprogs import (
    SETPRIV_NO_SYS_TIME,
    ChronyServer,
    FakeClock,
    ManagedProcess,
    NginxServer,
    PythonDateServer,
    TlsFiles,
    could_set_clock,
    guest_init,
    qemu_guest_script,
    run_under_clock,
)
from tests.support.require import need_program

pytestmark = pytest.mark.real

# Until tests/conftest.py lists it: loading it twice is harmless (pytest registers a plugin once).

DAY_S = 86_400
NTP_TOLERANCE_S = 0.05  # loopback, sub-ms delay; generous for a loaded 2-vCPU CI machine
DATE_TOLERANCE_S = 2.0  # the Date header has 1-s resolution, plus the request time


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """After each test (and after its fixtures stopped everything): none of its PIDs runs, no /dev/shm pair left."""
    before = len(realprogs.started_pids())
    yield
    started = realprogs.started_pids()[before:]
    assert realprogs.leftovers(started) == []


# --------------------------------------------------------------------------------------------------------
# libfaketime + ftshim
# --------------------------------------------------------------------------------------------------------

CHILD = r"""
import json, sys, threading, time
for _ in sys.stdin:
    t0 = time.monotonic(); time.sleep(0.05); slept = time.monotonic() - t0
    t0 = time.monotonic(); threading.Event().wait(0.05); waited = time.monotonic() - t0
    print(json.dumps({"wall": time.time(), "mono": time.monotonic(), "slept": slept, "waited": waited}), flush=True)
"""


def _ask(proc: ManagedProcess, timeout_s: float = 5.0) -> dict[str, float]:
    """One sample from CHILD, without blocking forever if it hangs (the libfaketime failure mode)."""
    assert proc.popen.stdin is not None and proc.popen.stdout is not None
    proc.popen.stdin.write("sample\n")
    proc.popen.stdin.flush()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.popen.stdout, selectors.EVENT_READ)
        assert sel.select(timeout_s), f"child did not answer within {timeout_s} s"
    line = proc.popen.stdout.readline()
    assert line, f"child exited with {proc.returncode}"
    sample: dict[str, float] = json.loads(line)
    return sample


def test_fake_clock_steps_wall_clock_while_monotonic_and_sleep_stay_real(fake_clock: FakeClock) -> None:
    with run_under_clock(
        [sys.executable, "-c", CHILD], fake_clock, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        for offset_s in (0, 180 * DAY_S, 0):
            fake_clock.set(offset_s)
            sample = _ask(child)
            _assert_cannot_set_clock(child)  # only now: right after Popen it may not have exec'd setpriv yet
            host_wall, host_mono = time.time(), time.monotonic()
            # The child's wall clock is ours + offset...
            assert sample["wall"] - host_wall == pytest.approx(offset_s, abs=0.5)
            # ...while its CLOCK_MONOTONIC is the very same kernel clock as ours (not epoch-like, not shifted).
            assert 0 <= host_mono - sample["mono"] < 0.5
            # time.sleep (the #426 EINVAL) and Event.wait (the sem_clockwait hang) both work and are real.
            assert 0.045 <= sample["slept"] < 0.5
            assert 0.045 <= sample["waited"] < 0.5


def test_fake_clock_writes_relative_specs(fake_clock: FakeClock) -> None:
    for offset_s, spec in ((5, "+5"), (-3, "-3"), (0.25, "+0.25"), (180 * DAY_S, "+15552000"), (-0.0, "+0")):
        fake_clock.set(offset_s)
        assert fake_clock.rc.read_text() == spec + "\n"
    env = fake_clock.env({"FAKETIME": "+1d", "FAKETIME_SHARED": "x", "PATH": "/usr/bin"})
    assert "FAKETIME" not in env and "FAKETIME_SHARED" not in env
    assert env["LD_PRELOAD"].split() == [str(fake_clock.ftshim), str(fake_clock.libfaketime)]
    assert env["FAKETIME_NO_CACHE"] == env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"


# --------------------------------------------------------------------------------------------------------
# chronyd
# --------------------------------------------------------------------------------------------------------


def _ntp(server: ChronyServer) -> Any:
    return ntplib.NTPClient().request(server.bind, port=server.port, version=4, timeout=2)


def _assert_cannot_set_clock(proc: ManagedProcess | None) -> None:
    """TESTING.md safety: whatever we run has no CAP_SYS_TIME, not even in its bounding set."""
    assert proc is not None
    for pid in proc.all_pids:
        assert not could_set_clock(pid), f"{proc.name} (pid {pid}) could set the clock"


def test_honest_chrony_answers_stratum_2_leap_0(chrony_server: Callable[..., ChronyServer]) -> None:
    server = chrony_server()
    _assert_cannot_set_clock(server.process)
    reply = _ntp(server)
    assert (reply.stratum, reply.leap) == (2, 0)
    assert reply.offset == pytest.approx(0, abs=NTP_TOLERANCE_S)
    assert 0 <= reply.delay < 0.05


def test_lying_chrony_follows_fake_clock(fake_clock: FakeClock, chrony_server: Callable[..., ChronyServer]) -> None:
    fake_clock.set(5)
    server = chrony_server(fake_clock)
    _assert_cannot_set_clock(server.process)
    assert _ntp(server).offset == pytest.approx(5, abs=NTP_TOLERANCE_S)
    fake_clock.set(-3)  # runtime change: the next query already sees it
    reply = _ntp(server)
    assert reply.offset == pytest.approx(-3, abs=NTP_TOLERANCE_S)
    assert (reply.stratum, reply.leap) == (2, 0)


def test_chrony_refuses_a_port_that_is_already_taken(chrony_server: Callable[..., ChronyServer]) -> None:
    """chronyd binds with SO_REUSEPORT: a second one on a taken port would start and share the queries."""
    first = chrony_server()
    with pytest.raises(RuntimeError, match="already in use"):
        chrony_server(port=first.port)


def test_unsynchronised_chrony_answers_leap_3_stratum_0(chrony_server: Callable[..., ChronyServer]) -> None:
    reply = _ntp(chrony_server(synchronised=False))
    assert (reply.leap, reply.stratum) == (3, 0)


# --------------------------------------------------------------------------------------------------------
# HTTP Date: nginx and python -m http.server
# --------------------------------------------------------------------------------------------------------


def _date_offset(url: str, **kwargs: Any) -> float:
    response = requests.head(url, timeout=5, **kwargs)
    response.raise_for_status()
    return parsedate_to_datetime(response.headers["Date"]).timestamp() - time.time()


def test_nginx_date_follows_fake_clock(fake_clock: FakeClock, nginx_server: Callable[..., NginxServer]) -> None:
    fake_clock.set(-180 * DAY_S)
    server = nginx_server(fake_clock)
    _assert_cannot_set_clock(server.process)
    assert server.process is not None and len(server.process.all_pids) == 2  # master + the worker we adopted
    assert _date_offset(server.url) == pytest.approx(-180 * DAY_S, abs=DATE_TOLERANCE_S)
    fake_clock.set(30)
    assert _date_offset(server.url) == pytest.approx(30, abs=DATE_TOLERANCE_S)


def test_https_nginx_verified_with_test_ca(
    fake_clock: FakeClock, nginx_server: Callable[..., NginxServer], test_ca: TlsFiles
) -> None:
    fake_clock.set(30)
    server = nginx_server(fake_clock, tls=(test_ca.cert, test_ca.key))
    assert server.url.startswith("https://127.0.0.1:")
    assert _date_offset(server.url, verify=str(test_ca.ca_bundle)) == pytest.approx(30, abs=DATE_TOLERANCE_S)
    # The system trust store must NOT accept it: proves the test CA is what made the request pass.
    with pytest.raises(requests.exceptions.SSLError):
        requests.head(server.url, timeout=5)


def test_python_date_server_follows_fake_clock(
    fake_clock: FakeClock, python_date_server: Callable[..., PythonDateServer]
) -> None:
    fake_clock.set(-180 * DAY_S)
    server = python_date_server(fake_clock)
    _assert_cannot_set_clock(server.process)
    assert _date_offset(server.url) == pytest.approx(-180 * DAY_S, abs=DATE_TOLERANCE_S)
    fake_clock.set(30)
    assert _date_offset(server.url) == pytest.approx(30, abs=DATE_TOLERANCE_S)


# --------------------------------------------------------------------------------------------------------
# QEMU (TCG) guest: a real kernel clock step, with the host clock provably untouched
# --------------------------------------------------------------------------------------------------------

GUEST_STEP = r"""
import ctypes, errno, json, os, select, time

libc = ctypes.CDLL("libc.so.6", use_errno=True)

class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

class itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", timespec), ("it_value", timespec)]

CLOCK_REALTIME, TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 0, 1, 2
libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(itimerspec), ctypes.c_void_p]
libc.clock_settime.argtypes = [ctypes.c_int, ctypes.POINTER(timespec)]

def check(rc):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc

fd = check(libc.timerfd_create(CLOCK_REALTIME, os.O_NONBLOCK | os.O_CLOEXEC))
its = itimerspec()
its.it_value.tv_sec = int(time.time()) + 230 * 365 * 86400   # far future: only a clock set can wake it
check(libc.timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, ctypes.byref(its), None))
try:
    os.read(fd, 8)
    armed_quiet = False
except BlockingIOError:
    armed_quiet = True

real0, mono0 = time.clock_gettime_ns(time.CLOCK_REALTIME), time.clock_gettime_ns(time.CLOCK_MONOTONIC)
target = real0 - 3600 * 10**9
check(guest_only(libc.clock_settime, CLOCK_REALTIME, ctypes.byref(timespec(target // 10**9, target % 10**9))))
real1, mono1 = time.clock_gettime_ns(time.CLOCK_REALTIME), time.clock_gettime_ns(time.CLOCK_MONOTONIC)

readable = bool(select.select([fd], [], [], 2.0)[0])
try:
    os.read(fd, 8)
    cancel_errno = 0
except OSError as exc:
    cancel_errno = exc.errno
print("RESULT " + json.dumps({
    "armed_quiet": armed_quiet,
    "step_s": ((real1 - real0) - (mono1 - mono0)) / 1e9,
    "mono_advance_s": (mono1 - mono0) / 1e9,
    "readable": readable,
    "ecanceled": cancel_errno == errno.ECANCELED,
}))
"""




def test_qemu_guest_clock_step_fires_cancel_on_set_and_leaves_host_clock_alone(
    qemu_guest: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    host_before = realprogs.host_realtime_minus_monotonic_s()
    result = qemu_guest(GUEST_STEP, timeout_s=120)
    host_after = realprogs.host_realtime_minus_monotonic_s()

    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, result.stdout
    guest = json.loads(lines[-1].removeprefix("RESULT "))
    assert guest["armed_quiet"]
    assert guest["step_s"] == pytest.approx(-3600, abs=0.05)  # the guest clock really stepped back an hour
    assert 0 <= guest["mono_advance_s"] < 1  # its monotonic clock did not
    assert guest["readable"] and guest["ecanceled"]  # TFD_TIMER_CANCEL_ON_SET fired
    # The host's wall clock was not touched: realtime − monotonic is unchanged (no NTP here disciplines it).
    assert host_after - host_before == pytest.approx(0, abs=0.001)


def test_qemu_guest_that_overruns_its_timeout_is_killed(
    qemu_guest: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """A hung guest costs its timeout, not the suite: QEMU is killed by the PID we started (no_leftovers checks)."""
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        qemu_guest("import time\ntime.sleep(600)\n", timeout_s=5)
    assert time.monotonic() - started < 15
    assert realprogs.started_pids()[-1].name == "qemu-system-x86_64"


@pytest.mark.parametrize("token", ["0" * 32, "f00dfeed" * 4])
def test_qemu_guest_script_refuses_to_run_outside_the_guest(tmp_path: Any, token: str) -> None:
    """Every guest script carries the guard; run one on the host (and without CAP_SYS_TIME, to be safe): it exits
    before its body, and guest_only never makes the call it guards."""
    setpriv = need_program("setpriv", "util-linux")
    script = tmp_path / "guest.py"
    body = "from __future__ import annotations\nprint('BODY RAN')\nguest_only(print, 'CALL MADE')\n"
    script.write_text(qemu_guest_script(body, token))
    proc = subprocess.run(
        [setpriv, *SETPRIV_NO_SYS_TIME[1:], sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "REFUSING" in proc.stderr
    assert "BODY RAN" not in proc.stdout and "CALL MADE" not in proc.stdout
    # guest_only itself refuses too, wherever it is called from: only the token of this run's guest opens it.
    namespace: dict[str, Any] = {}
    guard = qemu_guest_script("", token)
    with pytest.raises(SystemExit, match="REFUSING"):
        exec(compile(guard, "guard", "exec"), namespace)  # noqa: S102 - our own guard text, run on purpose
    assert "guest_only" in namespace


@given(st.text(max_size=80))
def test_qemu_guest_script_takes_only_a_hex_token(token: str) -> None:
    """The token goes into the kernel command line and the guard's source: nothing but 16-64 hex digits gets in."""
    if re.fullmatch(r"[0-9a-f]{16,64}", token):
        assert f"'timeguard.guest={token}'" in qemu_guest_script("print(1)", token)
    else:
        with pytest.raises(ValueError, match="hex"):
            qemu_guest_script("print(1)", token)


def test_qemu_guest_init_refuses_outside_its_guest() -> None:
    """The guest's PID 1 (static C init) mounts, chroots and powers off: on the host it must refuse, before all.

    Run as an ordinary process (not PID 1) it refuses at once. In a PID and mount namespace of its own it *is*
    PID 1; it then mounts a private /proc, finds no token of a guest run in the host's kernel command line, and
    refuses again — exiting, never calling reboot()."""
    need_program("gcc", "gcc libc6-dev")
    setpriv = need_program("setpriv", "util-linux")
    init = str(guest_init())
    plain = subprocess.run(
        [setpriv, *SETPRIV_NO_SYS_TIME[1:], init], capture_output=True, text=True, timeout=30, check=False
    )
    assert plain.returncode == 2
    assert "REFUSING" in plain.stderr and "PID 1" in plain.stderr
    assert "TIMEGUARD_GUEST_EXIT" not in plain.stdout  # it never got as far as running anything
    unshare = need_program("unshare", "util-linux")
    as_pid1 = subprocess.run(
        [setpriv, *SETPRIV_NO_SYS_TIME[1:], unshare, "--pid", "--fork", "--mount", "--propagation", "private", init],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert as_pid1.returncode == 2, as_pid1.stderr
    assert "REFUSING" in as_pid1.stderr and "not booted as this run's" in as_pid1.stderr
    assert "TIMEGUARD_GUEST_EXIT" not in as_pid1.stdout
