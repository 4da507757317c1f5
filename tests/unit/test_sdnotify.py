"""sd_notify against a real AF_UNIX datagram socket, the way systemd's manager listens (path and abstract)."""

from __future__ import annotations

import array
import logging
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from timeguard import sdnotify
from timeguard.sdnotify import Notifier, notify, watchdog_interval_s

LOGGER = "timeguard.sdnotify"


class Manager:
    """The listening end of $NOTIFY_SOCKET, as PID 1 binds it."""

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)
        self.address = address
        self.env_value = env_value

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    path = str(tmp_path / "notify")
    assert len(path.encode()) < 108, f"socket path too long for sun_path: {path}"
    m = Manager(path, path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield m
    m.close()


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    name = f"timeguard-test-{uuid.uuid4().hex}"
    m = Manager("\0" + name, "@" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield m
    m.close()


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in sdnotify.NOTIFY_ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _fresh_module_failure_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdnotify, "_module_failures", sdnotify._FailureLog())


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# ---- payloads, byte-exact ----------------------------------------------------------------------------------


def test_ready_is_one_datagram_byte_exact(manager: Manager) -> None:
    assert notify("READY=1") is True
    assert manager.recv() == b"READY=1"


def test_several_assignments_share_one_datagram(manager: Manager) -> None:
    assert notify("READY=1", "STATUS=offset=+0.003s sources=3/3 last_jump=none") is True
    assert manager.recv() == b"READY=1\nSTATUS=offset=+0.003s sources=3/3 last_jump=none"
    assert manager.nothing_pending()


def test_status_with_newlines_stays_one_assignment(manager: Manager) -> None:
    assert notify("STATUS=sources failed:\n  ntp1: timeout\r\n  ntp2: KoD RATE\n") is True
    assert manager.recv() == b"STATUS=sources failed:; ntp1: timeout; ntp2: KoD RATE"


def test_a_newline_cannot_forge_another_assignment(manager: Manager) -> None:
    assert notify("STATUS=ok\nREADY=1") is True
    payload = manager.recv()
    assert payload == b"STATUS=ok; READY=1"
    assert [line.split(b"=")[0] for line in payload.split(b"\n")] == [b"STATUS"]


def test_unicode_status_is_utf8(manager: Manager) -> None:
    assert notify("STATUS=offset ±3 ms") is True
    assert manager.recv() == "STATUS=offset ±3 ms".encode()


def test_overlong_status_is_cut_not_dropped(manager: Manager) -> None:
    assert notify("STATUS=" + "x" * 10_000) is True
    payload = manager.recv().decode()
    assert payload.startswith("STATUS=xxx")
    assert payload.endswith("…")
    assert len(payload) == len("STATUS=") + sdnotify.MAX_STATUS_CHARS


def test_notifier_payloads_byte_exact(manager: Manager) -> None:
    with Notifier() as n:
        assert n.ready("checking") is True
        assert manager.recv() == b"READY=1\nSTATUS=checking"
        assert n.ready() is True
        assert manager.recv() == b"READY=1"
        assert n.status("offset=+0.001s") is True
        assert manager.recv() == b"STATUS=offset=+0.001s"
        assert n.watchdog() is True
        assert manager.recv() == b"WATCHDOG=1"
        assert n.stopping() is True
        assert manager.recv() == b"STOPPING=1"
        assert n.stopping("hooks draining") is True
        assert manager.recv() == b"STOPPING=1\nSTATUS=hooks draining"


def test_reloading_carries_the_monotonic_clock_in_microseconds(manager: Manager) -> None:
    n = Notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    m = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", manager.recv())
    assert m, "RELOADING=1 must come with MONOTONIC_USEC (systemd >= 253)"
    assert before <= int(m.group(1)) <= after
    assert n.reloading("reloading config") is True
    assert manager.recv().endswith(b"\nSTATUS=reloading config")
    n.close()


def test_abstract_socket(abstract_manager: Manager) -> None:
    assert notify("READY=1") is True
    assert abstract_manager.recv() == b"READY=1"
    n = Notifier()
    assert n.watchdog() is True
    assert abstract_manager.recv() == b"WATCHDOG=1"
    n.close()


def test_sender_is_this_process_as_notifyaccess_main_requires(manager: Manager) -> None:
    # systemd attributes a datagram to a process by the kernel's SCM_CREDENTIALS, not by anything we write.
    manager.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert Notifier().watchdog() is True
    data, ancdata, _flags, _addr = manager.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    assert data == b"WATCHDOG=1"
    creds = [d for level, kind, d in ancdata if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert creds, "no SCM_CREDENTIALS received"
    pid, _uid, _gid = array.array("i", creds[0][: struct.calcsize("3i")])
    assert pid == os.getpid()


def test_socket_is_close_on_exec(manager: Manager) -> None:
    n = Notifier()
    assert n.watchdog() is True
    assert n._sock is not None
    assert not os.get_inheritable(n._sock.fileno())
    manager.recv()
    n.close()


# ---- not under systemd, and a manager that went away --------------------------------------------------------


def test_without_notify_socket_nothing_is_sent(no_systemd: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert notify("READY=1") is False
    n = Notifier()
    assert n.enabled is False
    assert (n.ready("x"), n.status("x"), n.watchdog(), n.reloading(), n.stopping()) == (False,) * 5
    assert n.watchdog_interval_s is None
    assert caplog.records == []


def test_empty_notify_socket_counts_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False
    assert Notifier().enabled is False


def test_removed_socket_returns_false_and_warns_once(manager: Manager, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    n = Notifier()
    assert n.watchdog() is True
    manager.recv()
    manager.close()
    os.unlink(manager.env_value)

    assert n.watchdog() is False
    assert n.status("still here") is False
    assert notify("WATCHDOG=1") is False
    assert notify("WATCHDOG=1") is False
    warned = warnings_from(caplog)
    # once for the Notifier, once for the module-level function: not once per ping
    assert len(warned) == 2, warned
    assert all(manager.env_value in w and "No such file" in w for w in warned)

    back = Manager(manager.env_value, manager.env_value)
    try:
        assert n.watchdog() is True
        assert back.recv() == b"WATCHDOG=1"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        back.close()
        n.close()


def test_stale_socket_file_without_listener(manager: Manager, caplog: pytest.LogCaptureFixture) -> None:
    manager.close()  # the path stays, nobody is bound: ECONNREFUSED, as after the manager died
    assert notify("READY=1") is False
    assert Notifier().watchdog() is False
    assert len(warnings_from(caplog)) == 2


def test_unsupported_notify_socket_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify("READY=1") is False
    n = Notifier()
    assert n.watchdog() is False
    warned = warnings_from(caplog)
    assert len(warned) == 2
    assert all("vsock:2:1234" in w for w in warned)


def test_a_manager_that_does_not_read_cannot_stall_the_daemon(manager: Manager) -> None:
    # A datagram socket whose reader stops draining blocks the sender once its queue is full; the watchdog
    # ping comes from the probe loop, so a wedged manager must cost at most the send timeout per call.
    n = Notifier(send_timeout_s=0.05)
    assert n.watchdog() is True
    for _ in range(10_000):  # fill the manager's queue (net.unix.max_dgram_qlen, 10 by default)
        start = time.monotonic()
        if not n.watchdog():
            break
    else:
        pytest.fail("the kernel never pushed back on an undrained datagram socket")
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    assert n.watchdog() is False
    assert time.monotonic() - start < 1.0
    manager.recv()  # the manager drains: pings get through again
    assert n.watchdog() is True
    n.close()


# ---- STATUS rate limit ---------------------------------------------------------------------------------------


def test_identical_status_is_rate_limited(manager: Manager) -> None:
    now = [100.0]
    n = Notifier(status_repeat_s=60.0, clock=lambda: now[0])
    assert n.status("offset=+0.001s") is True
    assert n.status("offset=+0.001s") is False
    now[0] += 59.0
    assert n.status("offset=+0.001s") is False
    assert n.status("offset=+0.002s") is True
    assert n.status("offset=+0.001s") is True  # a change back is a change
    now[0] += 60.0
    assert n.status("offset=+0.001s") is True  # refreshed after the interval
    assert [manager.recv() for _ in range(4)] == [
        b"STATUS=offset=+0.001s",
        b"STATUS=offset=+0.002s",
        b"STATUS=offset=+0.001s",
        b"STATUS=offset=+0.001s",
    ]
    assert manager.nothing_pending()
    n.close()


def test_ready_is_never_suppressed_and_counts_as_the_last_status(manager: Manager) -> None:
    now = [0.0]
    n = Notifier(clock=lambda: now[0])
    assert n.status("checking") is True
    assert n.ready("checking") is True
    assert n.status("checking") is False
    assert [manager.recv(), manager.recv()] == [b"STATUS=checking", b"READY=1\nSTATUS=checking"]
    assert manager.nothing_pending()
    n.close()


def test_failed_status_is_not_remembered(manager: Manager) -> None:
    n = Notifier()
    manager.close()
    os.unlink(manager.env_value)
    assert n.status("a") is False
    back = Manager(manager.env_value, manager.env_value)
    try:
        assert n.status("a") is True  # not suppressed: the manager never got it
        assert back.recv() == b"STATUS=a"
    finally:
        back.close()
        n.close()


# ---- malformed messages are the caller's bug -----------------------------------------------------------------


@pytest.mark.parametrize("line", ["READY", "=1", "ready=1", "STATUS ok", "STA TUS=1", "STATUS=a\0b"])
def test_malformed_lines_raise(line: str, no_systemd: None) -> None:
    with pytest.raises(ValueError, match="sd_notify"):
        notify(line)


def test_nothing_to_send_raises(no_systemd: None) -> None:
    with pytest.raises(ValueError, match="nothing to send"):
        notify()


def test_message_over_systemds_buffer_raises(no_systemd: None) -> None:
    with pytest.raises(ValueError, match="4096"):
        notify("X_DATA=" + "y" * 5000)


# ---- WATCHDOG_USEC / WATCHDOG_PID ----------------------------------------------------------------------------


def test_watchdog_unset_is_none(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert watchdog_interval_s({}) is None
    assert caplog.records == []


def test_watchdog_usec_without_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0


def test_watchdog_pid_ours() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(env) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "4242"}, pid=4242) == 1.5


def test_watchdog_pid_of_another_process(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval_s(env) is None
    assert any("not this process" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("usec", ["", "abc", "30s", "0", "-5", "1e6", "3.5", " ", " 30", "+30", "3_000", "٣٠"])
def test_watchdog_usec_garbage(usec: str, caplog: pytest.LogCaptureFixture) -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": usec}) is None
    assert any("WATCHDOG_USEC" in w and "positive integer" in w for w in warnings_from(caplog))


@pytest.mark.parametrize("pid", ["", "abc", "12x", " 12", "+12", "1_2"])
def test_watchdog_pid_garbage(pid: str, caplog: pytest.LogCaptureFixture) -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) is None
    assert any("WATCHDOG_PID" in w for w in warnings_from(caplog))


def test_notifier_pings_at_half_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert n.watchdog_interval_s == 30.0
    assert n.watchdog_ping_interval_s == 15.0


def test_child_env_drops_the_managers_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "PATH": "/bin"}
    assert sdnotify.child_env(env) == {"PATH": "/bin"}
