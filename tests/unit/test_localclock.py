from __future__ import annotations

import errno

import pytest

from timeguard.watch import localclock
from timeguard.watch.localclock import STA_INS, STA_NANO, STA_UNSYNC, _Timex, decode_timex


def test_struct_timex_matches_the_kernel_abi():
    import ctypes

    assert ctypes.sizeof(_Timex) == 208  # x86_64 / aarch64 glibc


def test_read_kernel_clock_unprivileged_read_only():
    k = localclock.read_kernel_clock()
    assert k.state.startswith("TIME_")
    assert 0 <= k.maxerror_s <= 16.0 and 0 <= k.esterror_s <= 16.0


def test_decode_units_and_flags():
    tx = _Timex()
    tx.status = STA_NANO | STA_INS
    tx.offset, tx.freq, tx.maxerror, tx.esterror, tx.tai = 1500, 65536 * 12, 2000, 50, 37
    k = decode_timex(1, tx)
    assert k.state == "TIME_INS" and k.flags == ("INS", "NANO") and k.leap_pending == "insert"
    assert k.offset_s == pytest.approx(1.5e-6) and k.freq_ppm == pytest.approx(12.0)
    assert k.maxerror_s == pytest.approx(0.002) and k.esterror_s == pytest.approx(0.00005)
    assert k.synchronised
    tx.status = STA_UNSYNC
    tx.offset = 1500  # microseconds without STA_NANO
    k = decode_timex(5, tx)
    assert not k.synchronised and k.offset_s == pytest.approx(0.0015) and k.leap_pending is None


def test_eperm_is_reported_not_raised(monkeypatch):
    def denied():
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(localclock, "read_kernel_clock", denied)
    state = localclock.read_local_clock()
    assert state.kernel is None
    assert "Operation not permitted" in state.kernel_error and "ProtectClock" in state.kernel_error
    assert "state not readable" in state.describe()[0]


def test_daemon_listing_failure_is_reported(monkeypatch):
    def broken():
        raise PermissionError("/proc hidden")

    monkeypatch.setattr(localclock, "running_time_daemons", broken)
    state = localclock.read_local_clock()
    assert state.daemons_error == "PermissionError: /proc hidden"
    assert "time daemons: not known" in state.describe()[1]


def test_describe_names_daemons():
    state = localclock.LocalClockState(None, "x", (("chronyd", 42),))
    assert state.describe()[1] == "time daemons: chronyd (pid 42)"
    assert "none running" in localclock.LocalClockState(None, "x", ()).describe()[1]


def test_hidden_processes_are_not_reported_as_none_running(tmp_path):
    with pytest.raises(localclock.ProcessesHidden, match="ProtectProc=invisible"):
        localclock.running_time_daemons(proc_root=str(tmp_path))  # an empty /proc: PID 1 invisible
