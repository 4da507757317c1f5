"""Real programs for integration tests: libfaketime clocks, chronyd, nginx, http.server, a QEMU guest kernel.

Recipes R1–R8 and R5 of shared/research/harness.md, as a library. Every rule of TESTING.md "Safety" is
enforced here rather than left to each test:

* The machine clock is never set. Daemons run under ``setpriv --bounding-set -sys_time --inh-caps -sys_time``
  (so even a misconfigured one gets EPERM), chronyd always with ``-x``; clock steps happen only inside a
  libfaketime process (the rc file) or inside a QEMU guest (its own kernel, TCG).
* Network: servers bind 127.0.0.1 (or ::1) only; chronyd gets ``-4``/``-6`` so it opens no wildcard socket.
* Processes are ended by the PID we started (never by name), and ``/dev/shm/*faketime*_<pid>`` is removed only
  for those PIDs and only after they have exited.

Pitfalls this module exists to absorb (harness.md "What did NOT work"):

* Python ≥ 3.11 under libfaketime with FAKETIME_DONT_FAKE_MONOTONIC=1 needs ``ftshim.so`` preloaded first, or
  ``time.sleep`` raises EINVAL (libfaketime #426).
* The rc file is read by daemons after they dropped privileges (_chrony, nginx's ``nobody`` worker): a file
  they can't read silently means *real* time, so every directory here is created 0755 under a world-traversable
  base, never under pytest's 0700 ``tmp_path``.
* ``FAKETIME`` in the environment silently overrides the rc file, and an inherited ``FAKETIME_SHARED`` would
  attach a child to someone else's shared memory: both are always removed.
* LD_PRELOAD goes on the final program only (``setpriv ... -- env LD_PRELOAD=... prog``): a preloaded process
  that exec()s leaks its ``/dev/shm`` pair.

One module per concern; the names below are the package's API (``from tests.support.realprogs import X``):

* ``scratch``: world-traversable scratch directories (and building the C helpers into them);
* ``faketime``: libfaketime + ftshim, :class:`FakeClock`;
* ``processes``: processes started under setpriv and stopped by PID, :class:`LoopbackServer`;
* ``net``: free loopback ports, a raw NTP query, the HTTP readiness probe;
* ``chrony``, ``http_servers`` (nginx, http.server), ``certs`` (a test CA);
* ``qemu``: a throw-away QEMU guest whose kernel clock a script may step.
"""

from tests.support.realprogs.certs import TlsFiles, make_test_ca
from tests.support.realprogs.chrony import ChronyServer, chronyd_nts_offset
from tests.support.realprogs.faketime import (
    FTSHIM_SOURCE,
    LIBFAKETIME_CANDIDATES,
    FakeClock,
    build_ftshim,
    default_ftshim,
    find_libfaketime,
)
from tests.support.realprogs.http_servers import NginxServer, PythonDateServer
from tests.support.realprogs.net import NTP_EPOCH_DELTA, NtpReply, ensure_port_free, free_port, ntp_query
from tests.support.realprogs.processes import (
    CAP_SYS_TIME,
    SETPRIV_NO_SYS_TIME,
    Lifecycle,
    LoopbackServer,
    ManagedProcess,
    StartedPid,
    could_set_clock,
    leftovers,
    resolve_program,
    run_under_clock,
    shm_entries,
    started_pids,
    stop_all,
)
from tests.support.realprogs.qemu import (
    GUEST_ENV,
    GUEST_INIT_SOURCE,
    GUEST_KERNEL_PACKAGE,
    GUEST_MARK,
    GUEST_MODULES,
    QEMU_CPU,
    guest_init,
    guest_kernel,
    guest_kernel_cache,
    guest_python,
    host_realtime_minus_monotonic_s,
    qemu_guest_script,
    qemu_run,
)
from tests.support.realprogs.scratch import remove_scratch, scratch_dir

__all__ = [
    "CAP_SYS_TIME",
    "FTSHIM_SOURCE",
    "GUEST_ENV",
    "GUEST_INIT_SOURCE",
    "GUEST_KERNEL_PACKAGE",
    "GUEST_MARK",
    "GUEST_MODULES",
    "LIBFAKETIME_CANDIDATES",
    "NTP_EPOCH_DELTA",
    "QEMU_CPU",
    "SETPRIV_NO_SYS_TIME",
    "ChronyServer",
    "FakeClock",
    "Lifecycle",
    "LoopbackServer",
    "ManagedProcess",
    "NginxServer",
    "NtpReply",
    "PythonDateServer",
    "StartedPid",
    "TlsFiles",
    "build_ftshim",
    "chronyd_nts_offset",
    "could_set_clock",
    "default_ftshim",
    "ensure_port_free",
    "find_libfaketime",
    "free_port",
    "guest_init",
    "guest_kernel",
    "guest_kernel_cache",
    "guest_python",
    "host_realtime_minus_monotonic_s",
    "leftovers",
    "make_test_ca",
    "ntp_query",
    "qemu_guest_script",
    "qemu_run",
    "remove_scratch",
    "resolve_program",
    "run_under_clock",
    "scratch_dir",
    "shm_entries",
    "started_pids",
    "stop_all",
]
