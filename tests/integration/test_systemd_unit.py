"""systemd/timeguard.service, checked by systemd's own tools (systemd-analyze, offline: PID 1 need not be systemd).

- `security --offline=true`: the overall exposure stays at 2.0 or below. For reference, systemd-timesyncd scores 2.3
  and chrony 3.7-4.0 (research/style_ecosystem.md §B1.4); they are measured here too when their units are installed.
- `verify`: no warning at all, not even an unknown key or an unparsable value (systemd ignores those silently
  at run time, which is how hardening quietly disappears).
- The directives the daemon relies on are there, and the two that would break it (ProtectClock, ProcSubset=pid)
  are not; the syscall filter still lets timerfd and the read-only adjtimex through and refuses clock setting.
- MemoryDenyWriteExecute=: timeguard's ctypes code still works under the kernel's W^X rule.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.require import need, need_program

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "timeguard.service"
INSTALLED_EXEC = "/opt/timeguard/bin/timeguard"
MAX_EXPOSURE = 2.0
#: Other time daemons' units, scored beside ours when the machine has them (informational only).
REFERENCE_UNITS = (
    "/lib/systemd/system/systemd-timesyncd.service",
    "/lib/systemd/system/chrony.service",
    "/usr/lib/systemd/system/chronyd.service",
)

pytestmark = pytest.mark.real


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order, as systemd reads them: comments skipped, continuations joined."""
    out: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == section and k == key]


def single(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{section}.{key}: expected exactly one assignment, found {found}"
    return found[0]


def systemd_analyze() -> str:
    return need_program("systemd-analyze", "systemd")


def exposure(analyze: str, unit: Path | str) -> tuple[float, str]:
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, f"no overall exposure in systemd-analyze output (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return float(m.group(1)), proc.stdout


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here.

    `verify` checks that ExecStart's program exists, and /opt/timeguard is where an installation puts it, not
    where a checkout has it. Only that path changes: test_verify_flags_nothing_but_the_install_path shows that
    the unchanged unit has no other complaint.
    """
    exe = Path(sys.executable).parent / "timeguard"
    target = str(exe) if os.access(exe, os.X_OK) else "/bin/true"
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC} run\n" in text
    copy = tmp_path / UNIT.name  # same name: the unit's name is part of what systemd checks
    copy.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} run\n", f"ExecStart={target} run\n"))
    return copy


def verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: there is no man page to check. Warnings go to stderr and exit 0, so the output is what counts.
    return subprocess.run(
        [analyze, "verify", "--man=no", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=unit.parent,
    )


# ---- systemd's own verdicts ------------------------------------------------------------------------------------


def test_exposure_at_most_2_and_below_the_time_daemons() -> None:
    analyze = systemd_analyze()
    ours, report = exposure(analyze, UNIT)
    flagged = [line.strip() for line in report.splitlines() if line.startswith("✗")]
    print(f"\ntimeguard.service exposure: {ours}")
    print("  still flagged:\n    " + "\n    ".join(flagged))
    for ref in REFERENCE_UNITS:  # informational: whichever reference units this machine happens to have
        if os.path.exists(ref):
            theirs, _ = exposure(analyze, ref)
            print(f"{Path(ref).name} exposure: {theirs}")
    assert ours <= MAX_EXPOSURE, f"exposure {ours} > {MAX_EXPOSURE}; flagged:\n" + "\n".join(flagged)


def test_security_sees_no_capability_no_clock_device_and_a_filter() -> None:
    _, report = exposure(systemd_analyze(), UNIT)
    passed = {line.split()[1] for line in report.splitlines() if line.startswith("✓")}
    for check in (
        "CapabilityBoundingSet=~CAP_SYS_TIME",
        "AmbientCapabilities=",
        "NoNewPrivileges=",
        "User=/DynamicUser=",
        "MemoryDenyWriteExecute=",
        "SystemCallArchitectures=",
        "RestrictAddressFamilies=~AF_NETLINK",
        "RestrictAddressFamilies=~AF_PACKET",
        "DeviceAllow=",  # DevicePolicy=closed with nothing allowed
        "PrivateDevices=",
        "ProtectProc=",
    ):
        assert check in passed, f"systemd-analyze no longer passes {check}"
    # systemd's own reading of the filter: adjtimex is allowed (the read of the kernel's sync state).
    assert re.search(r"✗ SystemCallFilter=~@clock .*adjtimex is allowed", report)


def test_verify_is_clean(tmp_path: Path) -> None:
    proc = verify(systemd_analyze(), runnable_copy(tmp_path))
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, output
    assert output == "", f"systemd-analyze verify complained:\n{output}"


def test_verify_flags_nothing_but_the_install_path(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    need(not os.path.exists(INSTALLED_EXEC), f"{INSTALLED_EXEC} exists here, so verify cannot show it missing")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text())
    proc = verify(analyze, copy)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines, "verify should report the missing /opt/timeguard/bin/timeguard"
    assert all(INSTALLED_EXEC in line for line in lines), "\n".join(lines)


def test_verify_does_flag_a_broken_directive(tmp_path: Path) -> None:
    # The clean result above means something only if verify reads these directives at all.
    copy = runnable_copy(tmp_path)
    copy.write_text(copy.read_text() + "\n[Service]\nProtectProc=bogus\nSystemCallFilter=not_a_syscall\n")
    output = verify(systemd_analyze(), copy)
    text = output.stdout + output.stderr
    assert "ProtectProc" in text or "/proc/ protection mode" in text, text
    assert "not_a_syscall" in text, text


# ---- the directives themselves -------------------------------------------------------------------------------


def test_the_directives_the_daemon_relies_on() -> None:
    assert single("Type") == "notify"
    assert single("NotifyAccess") == "main"
    assert single("ExecStart") == f"{INSTALLED_EXEC} run"
    assert single("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert re.fullmatch(r"\d+s", single("WatchdogSec")), "WatchdogSec must be set (the agent pings at half of it)"
    assert single("Restart") == "on-failure"
    assert single("RestartSec")
    assert single("TimeoutStopSec")
    assert single("DynamicUser") == "yes" or values("User"), "must not run as root"
    assert values("User") in ([], ["timeguard"])
    assert single("StateDirectory") == "timeguard"
    assert single("ConfigurationDirectory") == "timeguard"
    assert single("UMask") == "0077"
    assert single("NoNewPrivileges") == "yes"
    assert single("ProtectSystem") == "strict"
    assert single("ProtectProc") == "invisible"
    assert single("SystemCallErrorNumber") == "EPERM"
    assert single("SystemCallArchitectures") == "native"
    assert single("MemoryDenyWriteExecute") == "yes"
    assert single("PrivateDevices") == "yes"
    assert "PYTHONFAULTHANDLER=1" in values("Environment"), "a watchdog SIGABRT should leave stacks in the journal"
    assert single("WantedBy", "Install") == "multi-user.target"


def test_no_capability_at_all() -> None:
    # Capability sets accumulate over assignments: every one must be empty, or some capability is granted.
    assert values("CapabilityBoundingSet") == [""]
    assert values("AmbientCapabilities") == [""]
    live = "\n".join(f"{k}={v}" for _, k, v in directives(UNIT.read_text()))
    assert "CAP_SYS_TIME" not in live


def test_nothing_that_would_break_the_daemon() -> None:
    assert values("ProtectClock") in ([], ["no"]), "ProtectClock=yes denies adjtimex(modes=0): EPERM on a read"
    assert "pid" not in values("ProcSubset"), "ProcSubset=pid hides /proc/stat, which psutil.boot_time() reads"
    assert values("PrivateNetwork") in ([], ["no"])
    assert not values("IPAddressDeny"), "NTP/HTTPS/webhook peers are arbitrary addresses"
    families = " ".join(values("RestrictAddressFamilies")).split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert not any(f.startswith("~") for f in families)


def test_does_not_wait_for_time_sync() -> None:
    # timeguard is the check of the sync daemons' claim; it must not wait for that claim (time-sync.target).
    deps = " ".join(" ".join(values(k, "Unit")) for k in ("After", "Wants", "Requires", "BindsTo")).split()
    assert "time-sync.target" not in deps
    assert "network-online.target" not in deps  # clock-step detection needs no network; sources retry


def syscall_group(analyze: str, name: str) -> set[str]:
    proc = subprocess.run([analyze, "syscall-filter", "--no-pager", name], capture_output=True, text=True, check=True)
    out: set[str] = set()
    for line in proc.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        out |= syscall_group(analyze, item) if item.startswith("@") else {item}
    return out


def effective_allow_list(analyze: str) -> set[str]:
    """SystemCallFilter= lines applied in order, as systemd does once the first line made it an allow-list.

    systemd seeds an allow-list with @default (what every program needs), then adds or removes per line.
    """
    allowed = syscall_group(analyze, "@default")
    assignments = values("SystemCallFilter")
    assert assignments and not assignments[0].startswith("~"), "the filter must be an allow-list"
    for value in assignments:
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= syscall_group(analyze, item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


def test_syscall_filter_lets_the_daemon_read_and_refuses_setting_the_clock() -> None:
    allowed = effective_allow_list(systemd_analyze())
    needed = {
        "timerfd_create", "timerfd_settime", "timerfd_gettime",  # step detection (TFD_TIMER_CANCEL_ON_SET)
        "clock_adjtime", "adjtimex",  # read-only kernel sync state (glibc's adjtimex is clock_adjtime)
        "clock_gettime", "clock_nanosleep", "socket", "connect", "sendto", "recvfrom", "sendmsg", "recvmsg",
        "execve", "clone3", "wait4", "pipe2", "fcntl", "pread64", "pwrite64", "fdatasync", "mmap", "mprotect",
        "getrandom", "prlimit64", "sched_getaffinity", "poll", "epoll_wait",
    }  # fmt: skip
    assert needed <= allowed, f"filtered although the daemon needs them: {sorted(needed - allowed)}"
    refused = {"clock_settime", "settimeofday", "stime", "init_module", "reboot", "ptrace", "setrlimit", "mount"}
    assert not (refused & allowed), f"allowed although nothing needs them: {sorted(refused & allowed)}"


# ---- MemoryDenyWriteExecute= ------------------------------------------------------------------------------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

MDWE_PROBE = r"""
import ctypes, mmap
from timeguard.watch.localclock import read_local_clock
state = read_local_clock()
assert state.kernel is not None, state.kernel_error
cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert cb(41) == 42
# timerfd through ctypes, as the step detector arms it: CLOCK_REALTIME, ABSTIME | CANCEL_ON_SET
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.timerfd_create(0, 0o2000000 | 0o4000)
assert fd >= 0, ctypes.get_errno()
spec = (ctypes.c_long * 4)(0, 0, 2**40, 0)
assert libc.timerfd_settime(fd, 1 | 2, spec, None) == 0, ctypes.get_errno()
import os; os.close(fd)
import importlib.util
if importlib.util.find_spec("timeguard.watch.clockwatch"):
    import timeguard.watch.clockwatch
import hashlib, sqlite3, ssl
ssl.create_default_context()
sqlite3.connect(":memory:").execute("select 1")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("W^X enforced")
"""


def _enter_mdwe() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def test_ctypes_code_works_under_write_xor_execute() -> None:
    # The kernel's PR_SET_MDWE (Linux >= 6.3, inherited across exec) enforces the same rule as systemd 252's
    # seccomp-based MemoryDenyWriteExecute=: no writable+executable mapping, no mprotect adding PROT_EXEC.
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO,
        preexec_fn=_enter_mdwe,  # a prctl between fork and exec, in a single-threaded child
    )
    need(proc.returncode != 97, f"this kernel ({os.uname().release}) lacks PR_SET_MDWE (Linux >= 6.3)")
    assert proc.returncode == 0, proc.stderr
    assert "W^X enforced" in proc.stdout, "the probe did not run under W^X, so it proves nothing"
