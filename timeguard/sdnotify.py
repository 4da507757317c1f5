"""systemd's notify protocol (sd_notify(3)) in a few lines, without libsystemd or the ``sdnotify`` package.

The protocol is one datagram of ``KEY=value`` lines, sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). systemd declares it stable (systemd.io/PORTABILITY_AND_STABILITY),
and its own MIT-0 ``notify-selfcontained-example.py`` is the model (research/style_ecosystem.md §B1.1).

Outside systemd every call is a cheap no-op that returns False. A notification that cannot be delivered
(the socket vanished, the manager is wedged) never raises: the daemon's job is the clock, not its status
line. It is not silent either: the first failure is logged as a warning, repeats at debug level, and a
recovery is logged again. A malformed message is a bug in the caller and raises ValueError.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

#: What systemd reads of one notification (NOTIFY_BUFFER_MAX = PIPE_BUF); a longer datagram is dropped whole.
MAX_MESSAGE_BYTES = 4096
#: ``systemctl status`` shows one line; a longer STATUS is cut here, with an ellipsis, rather than dropped.
MAX_STATUS_CHARS = 512
#: A manager that does not drain its socket must not stall the probe loop (and so the watchdog) for longer.
SEND_TIMEOUT_S = 1.0
#: The variables that address *this* service's manager; a hook subprocess must not inherit them.
NOTIFY_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_DECIMAL = re.compile(r"[0-9]+\Z")  # what systemd writes; int() would also take " 30", "+30" and "3_0"


def _address(value: str) -> bytes:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``; OSError for a form this module cannot reach."""
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    # systemd ≥ 254 may also hand out "vsock:CID:PORT"; a unit started by such a manager sees it here.
    raise OSError(f"unsupported NOTIFY_SOCKET {value!r} (expected an absolute path or @abstract-name)")


def encode(lines: Sequence[str]) -> bytes:
    """One datagram, one ``KEY=value`` assignment per line.

    A line break inside a value would forge a second assignment, so it is replaced by ``"; "``. A STATUS is
    cut to :data:`MAX_STATUS_CHARS`. A line that is not an assignment, or a NUL byte, raises ValueError.
    """
    if not lines:
        raise ValueError("sd_notify: nothing to send")
    out = []
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not _KEY.match(key):
            raise ValueError(f"sd_notify: {line!r} is not a KEY=value assignment")
        if "\0" in value:
            raise ValueError(f"sd_notify: NUL byte in the value of {key}")
        value = _LINE_BREAKS.sub("; ", value.strip()) if ("\n" in value or "\r" in value) else value
        if key == "STATUS" and len(value) > MAX_STATUS_CHARS:
            value = value[: MAX_STATUS_CHARS - 1] + "…"
        out.append(f"{key}={value}")
    message = "\n".join(out).encode()
    if len(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"sd_notify: message of {len(message)} bytes exceeds systemd's {MAX_MESSAGE_BYTES}")
    return message


class _FailureLog:
    """Warn once when notifications start failing, and once when they work again; debug in between."""

    def __init__(self) -> None:
        self.failing = False

    def failed(self, target: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        if self.failing:
            log.debug("sd_notify to %s still failing: %s", target, reason)
            return
        self.failing = True
        log.warning(
            "sd_notify: cannot notify systemd via %s: %s; systemd will not see READY/STATUS/WATCHDOG "
            "(a watchdog timeout may follow); further failures are logged at debug level",
            target,
            reason,
        )

    def succeeded(self, target: str) -> None:
        if self.failing:
            self.failing = False
            log.info("sd_notify: systemd reachable again via %s", target)


_module_failures = _FailureLog()
_module_lock = threading.Lock()


def notify(*lines: str) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=…"``, ``"WATCHDOG=1"``…) as one datagram to ``$NOTIFY_SOCKET``.

    True when the datagram was handed to the socket. False when not under systemd (no ``$NOTIFY_SOCKET``) or
    when delivery failed (logged, see the module doc). Opens a socket per call; a daemon that notifies
    often uses :class:`Notifier`.
    """
    message = encode(lines)
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    with _module_lock:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(message, _address(target))
        except OSError as exc:
            _module_failures.failed(target, exc)
            return False
        _module_failures.succeeded(target)
        return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects us to honour (``WatchdogSec=``), in seconds, or None.

    Read from ``$WATCHDOG_USEC``. It applies only if ``$WATCHDOG_PID`` is unset or is our pid (a child that
    inherited the variables is not the watched process). Ping at **half** this interval
    (sd_watchdog_enabled(3)): :attr:`Notifier.watchdog_ping_interval_s`. An invalid value gives None and a
    warning that says what was wrong.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text is not None:
        if not _DECIMAL.match(pid_text):
            log.warning("sd_notify: ignoring the watchdog: WATCHDOG_PID=%r is not a process id", pid_text)
            return None
        watched = int(pid_text)
        own = os.getpid() if pid is None else pid
        if watched != own:
            log.debug("sd_notify: the watchdog is for pid %d, not this process (%d)", watched, own)
            return None
    usec = int(usec_text) if _DECIMAL.match(usec_text) else 0
    if usec <= 0:
        log.warning("sd_notify: ignoring the watchdog: WATCHDOG_USEC=%r is not a positive integer", usec_text)
        return None
    return usec / 1_000_000


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: ours) without the variables that address this service's manager.

    For hook subprocesses: with ``NotifyAccess=main`` systemd ignores their messages anyway, but a hook that
    sees ``$WATCHDOG_USEC`` may believe it is being watched.
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in NOTIFY_ENV_VARS}


class Notifier:
    """A daemon's link to systemd: one socket, READY/STATUS/WATCHDOG/RELOADING/STOPPING, and quiet repeats.

    Every method returns True when a datagram was sent, and False when not under systemd, when delivery
    failed (logged once), or when an identical STATUS was suppressed. Thread-safe. Reload sequence:
    ``reloading()``, reload, ``ready(status)``.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        status_repeat_s: float = 60.0,
        send_timeout_s: float = SEND_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.target: str | None = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = watchdog_interval_s(env)
        self._status_repeat_s = status_repeat_s
        self._send_timeout_s = send_timeout_s
        self._clock = clock
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failures = _FailureLog()
        self._last_status: str | None = None
        self._last_status_at = 0.0
        if self.target is not None:
            try:
                _address(self.target)
            except OSError as exc:
                self._failures.failed(self.target, exc)

    @property
    def enabled(self) -> bool:
        """Whether we run under a manager that listens (``$NOTIFY_SOCKET`` set)."""
        return self.target is not None

    @property
    def watchdog_ping_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog`: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_interval_s is None else self.watchdog_interval_s / 2

    def send(self, *lines: str) -> bool:
        """Send arbitrary assignments as one datagram (the named methods cover the usual ones)."""
        message = encode(lines)
        if self.target is None:
            return False
        with self._lock:
            return self._send_locked(message)

    def _send_locked(self, message: bytes) -> bool:
        assert self.target is not None
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(self._send_timeout_s)
            # sendto, not connect: a manager that re-executes (daemon-reexec) binds a new socket at the
            # same path, and a connected socket would keep pointing at the old one.
            self._sock.sendto(message, _address(self.target))
        except OSError as exc:
            self._failures.failed(self.target, exc)
            return False
        self._failures.succeeded(self.target)
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and the status), sent even if the status is unchanged: start-up or reload is complete."""
        lines = ["READY=1"] if status is None else ["READY=1", f"STATUS={status}"]
        sent = self.send(*lines)
        if sent and status is not None:
            self._remember_status(status)
        return sent

    def status(self, text: str) -> bool:
        """``STATUS=text``. An unchanged text is sent again only every ``status_repeat_s`` seconds."""
        if self.target is None:
            return False
        with self._lock:
            now = self._clock()
            if text == self._last_status and now - self._last_status_at < self._status_repeat_s:
                return False
            sent = self._send_locked(encode([f"STATUS={text}"]))
            if sent:
                self._last_status, self._last_status_at = text, now
            return sent

    def watchdog(self) -> bool:
        """``WATCHDOG=1``. Call it from the work loop after an iteration completes, never from a side thread."""
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by systemd ≥ 253, ignored by 252); then :meth:`ready`."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
        return self.send(*lines, *([f"STATUS={status}"] if status is not None else []))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun (systemd shows "deactivating" instead of a hung "active")."""
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status is not None else []))

    def _remember_status(self, status: str) -> None:
        with self._lock:
            self._last_status, self._last_status_at = status, self._clock()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
