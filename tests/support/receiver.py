"""A real webhook receiver on loopback: verifies Standard Webhooks signatures, records, and misbehaves on demand.

It is what an alert's receiver does in production — an HTTP server (``http.server``, one thread per request)
that checks ``webhook-signature`` with the shared secret and ``webhook-timestamp`` against *its own real clock*
with the standard ±5 minute tolerance (``standardwebhooks``' "Message timestamp too old/too new"), and dedupes
on ``webhook-id``. Tests tell it to:

* ``fail_next(n, status=500)`` — answer the next ``n`` requests with an error;
* ``throttle_next(n, retry_after=...)`` — answer 429 with ``Retry-After`` (seconds, or an HTTP-date with a
  ``Date`` header, both from this process's real clock);
* ``hang(seconds)`` — read and record each request, then never answer it (until the time is over, when the
  connection is dropped unanswered);
* ``go_down()`` / ``come_up()`` / ``down_for(seconds)`` — close the listening socket (connections refused) and
  open the same port again;
* ``delay_s`` — answer every request after a pause (a slow receiver).

Only 127.0.0.1 / ::1. Everything it starts is a thread of the test process, stopped by :meth:`stop`.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

TOLERANCE_S = 300.0  # Standard Webhooks' reference libraries


@dataclass
class Received:
    """One request as the receiver saw it."""

    id: str | None  # webhook-id
    body: bytes
    headers: dict[str, str]  # lower-case names
    verified: bool | None  # None: no secret configured
    reason: str  # why verification failed ("" when it passed)
    status: int  # what was answered; 0 = never answered (hang)
    mono: float  # time.monotonic() when the body had been read
    path: str = "/"
    seq: int = 0

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> tuple[bool, str]:
    """Standard Webhooks verification, as a receiver does it, against this process's real clock."""
    msg_id, stamp, signatures = (headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        return False, "missing required headers"
    try:
        timestamp = int(stamp)
    except ValueError:
        return False, "invalid signature headers"
    now = time.time() if now is None else now
    if timestamp < now - tolerance_s:
        return False, f"Message timestamp too old ({now - timestamp:.0f} s)"
    if timestamp > now + tolerance_s:
        return False, f"Message timestamp too new ({timestamp - now:.0f} s)"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True, ""
    return False, "No matching signature found"


@dataclass
class _Plan:
    fail: list[int] = field(default_factory=list)  # statuses for the next requests
    throttle: list[str] = field(default_factory=list)  # Retry-After values for the next requests
    hang_until: float = 0.0  # monotonic


class Receiver:
    def __init__(self, secret: str | None = None, *, host: str = "127.0.0.1", port: int | None = None,
                 tolerance_s: float = TOLERANCE_S, delay_s: float = 0.0, reject_unverified: bool = True) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the test receiver listens on loopback only")
        self.secret = secret
        self.host = host
        self.tolerance_s = tolerance_s
        self.delay_s = delay_s
        self.reject_unverified = reject_unverified
        self._port = port or 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._plan = _Plan()
        self._cond = threading.Condition()
        self._released = threading.Event()  # set on stop: hung handlers return
        self.received: list[Received] = []

    # -------------------------------------------------------------------------------------------- life

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}/hook"

    def start(self) -> Receiver:
        self._released.clear()
        self.come_up()
        return self

    def stop(self) -> None:
        self._released.set()
        self.go_down()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def come_up(self) -> None:
        if self._server is not None:
            return
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A sender that gave up (timeout) or closed its keep-alive line: normal here, not worth a trace.
                import sys

                if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
                    super().handle_error(request, client_address)

        deadline = time.monotonic() + 5
        while True:
            try:
                server = Server((self.host, self._port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline or not self._port:
                    raise
                time.sleep(0.05)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"receiver:{self._port}", daemon=True)
        self._thread.start()

    def go_down(self) -> None:
        """Close the listening socket: new connections are refused (requests already inside carry on)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def down_for(self, seconds: float) -> threading.Thread:
        self.go_down()
        timer = threading.Timer(seconds, self.come_up)
        timer.daemon = True
        timer.start()
        return timer

    # ----------------------------------------------------------------------------------------- orders

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._cond:
            self._plan.fail.extend([status] * n)

    def throttle_next(self, n: int, retry_after: str | float = 1) -> None:
        """429s; ``retry_after`` a number of seconds, or ``"date:N"`` for an HTTP-date N s from now."""
        with self._cond:
            self._plan.throttle.extend([str(retry_after)] * n)

    def hang(self, seconds: float) -> None:
        with self._cond:
            self._plan.hang_until = time.monotonic() + seconds

    def release_hang(self) -> None:
        with self._cond:
            self._plan.hang_until = 0.0
            self._cond.notify_all()

    # ---------------------------------------------------------------------------------------- queries

    def accepted(self) -> list[Received]:
        with self._cond:
            return [r for r in self.received if r.accepted]

    def accepted_ids(self) -> set[str]:
        return {r.id for r in self.accepted() if r.id is not None}

    def by_id(self) -> dict[str | None, list[Received]]:
        out: dict[str | None, list[Received]] = {}
        with self._cond:
            for r in self.received:
                out.setdefault(r.id, []).append(r)
        return out

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def wait_accepted(self, ids: Iterable[str], timeout: float) -> bool:
        wanted = set(ids)
        return self.wait_for(lambda r: wanted <= {x.id for x in r.received if x.accepted}, timeout)

    def wait_received(self, count: int, timeout: float) -> bool:
        return self.wait_for(lambda r: len(r.received) >= count, timeout)

    # ---------------------------------------------------------------------------------------- handler

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        now_mono = time.monotonic()
        headers = {k.lower(): v for k, v in req.headers.items()}
        verified, reason = (None, "")
        if self.secret is not None:
            verified, reason = verify(self.secret, headers, body, tolerance_s=self.tolerance_s)
        with self._cond:
            record = Received(headers.get("webhook-id"), body, headers, verified, reason, 0, now_mono, req.path,
                              len(self.received) + 1)
            hang_until = self._plan.hang_until
            if now_mono < hang_until:
                action: tuple[str, Any] = ("hang", hang_until)
            elif self._plan.fail:
                action = ("fail", self._plan.fail.pop(0))
            elif self._plan.throttle:
                action = ("throttle", self._plan.throttle.pop(0))
            elif verified is False and self.reject_unverified:
                action = ("reject", 401)
            else:
                action = ("ok", 200)
            if action[0] != "hang":
                record.status = {"throttle": 429}.get(action[0], action[1])
            self.received.append(record)
            self._cond.notify_all()
        if action[0] == "hang":
            # Accepted and read, never answered: the sender times out. When the hang is over, drop the line.
            with self._cond:
                while time.monotonic() < self._plan.hang_until and not self._released.is_set():
                    self._cond.wait(0.05)
            req.close_connection = True
            with contextlib.suppress(OSError):
                req.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.delay_s and action[0] == "ok":
            self._released.wait(self.delay_s)
        extra: dict[str, str] = {}
        payload = b"ok"
        if action[0] == "throttle":
            value = action[1]
            if value.startswith("date:"):
                now = time.time()
                extra["Retry-After"] = email.utils.formatdate(now + float(value[5:]), usegmt=True)
            else:
                extra["Retry-After"] = value
            payload = b"rate_limited"
        elif action[0] == "fail":
            payload = b"internal error (as ordered)"
        elif action[0] == "reject":
            payload = f"signature rejected: {reason}".encode()
        with contextlib.suppress(OSError):
            req.send_response(record.status)
            for name, value in extra.items():
                req.send_header(name, value)
            req.send_header("Content-Type", "text/plain")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
