"""In-test HTTP(S) servers whose ``Date`` header runs at a chosen, sub-second offset from the real clock.

Loopback only. The server is Python's ``http.server`` (HTTP/1.1, keep-alive) in threads of the test process;
its clock is ``time.time() + offset_s``, truncated to the second as real servers do, so the true offset of
the host clock against it is exactly ``offset_s``. HTTPS uses a certificate from a ``trustme`` test CA whose
bundle is written to a temporary file (``ca_bundle``); its validity can be chosen (``not_before``/``not_after``),
and ``ca`` may be an intermediate (its chain is served, its root goes in the bundle).

The ``Date`` is formatted with ``email.utils.formatdate`` — deliberately not timeguard's own code.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

#: Sentinel for "send no Date header at all".
NO_DATE = object()


@dataclass
class Served:
    """One request as the server saw it."""

    method: str
    headers: dict[str, str]
    connection: int  # which TCP connection (keep-alive shows as several requests on one)
    server_time_s: float  # the server's clock (real time + offset) when it stamped the Date


@dataclass
class FakeDateServer:
    """A loopback Date server; configure, then ``start()`` (or use :func:`running`)."""

    offset_s: float = 0.0
    #: request index (0-based) -> offset, overriding ``offset_s`` (a server clock that steps mid-measurement)
    offset_schedule: Callable[[int], float] | None = None
    #: a fixed Date value to send instead of the real one, or NO_DATE for none at all
    date: str | object | None = None
    #: an Age header for every answer, or request index -> Age (None: no header)
    age: str | Callable[[int], str | None] | None = None
    head_status: int | None = None  # e.g. 405: answer HEAD with this status (GET still works)
    stall_from: int | None = None  # from this request index on, never answer (until stop())
    tls: bool = False
    ca: trustme.CA | None = None  # the CA that signs the server certificate (a fresh one if None)
    cert_names: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")  # the certificate's subjectAltNames
    not_before: datetime | None = None  # the server certificate's validity (trustme's default: 2000–3000)
    not_after: datetime | None = None
    host: str = "127.0.0.1"
    served: list[Served] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)  # the server name each TLS client sent (None: no SNI)

    ca_bundle: str | None = field(default=None, init=False)  # the PEM file of the CA (HTTPS only)
    _httpd: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _connections: int = field(default=0, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    @property
    def connections(self) -> int:
        return self._connections

    def start(self) -> FakeDateServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_Server", (_QuietServer,), {"address_family": family})
        self._httpd = server_cls((self.host, 0), _make_handler(self))
        if self.tls:
            self._tmp = Path(tempfile.mkdtemp(prefix="timeguard-fake-http-"))
            ca = self.ca or trustme.CA()
            cert = ca.issue_cert(*self.cert_names, not_before=self.not_before, not_after=self.not_after)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ctx)  # the leaf and any intermediates up to the root
            ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            # The handshake runs in the handler thread, so a client that stalls it cannot block accept().
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
            root = ca
            while root.parent_cert is not None:
                root = root.parent_cert
            bundle = self._tmp / "ca.pem"
            root.cert_pem.write_to_path(str(bundle))
            self.ca_bundle = str(bundle)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _next_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    def _answer(self, method: str, headers: dict[str, str], connection: int) -> tuple[int, list[tuple[str, str]]]:
        with self._lock:
            index = len(self.served)
            offset = self.offset_schedule(index) if self.offset_schedule else self.offset_s
            server_time = time.time() + offset
            self.served.append(Served(method, headers, connection, server_time))
        if self.stall_from is not None and index >= self.stall_from:
            self._stopping.wait(30)
        out: list[tuple[str, str]] = []
        if self.date is None:
            out.append(("Date", email.utils.formatdate(math.floor(server_time), usegmt=True)))
        elif self.date is not NO_DATE:
            out.append(("Date", str(self.date)))
        age = self.age(index) if callable(self.age) else self.age
        if age is not None:
            out.append(("Age", age))
        status = self.head_status if (method == "HEAD" and self.head_status) else 200
        if status == 405:
            out.append(("Allow", "GET"))
        if 300 <= status < 400:
            out.append(("Location", "/elsewhere"))  # a client that follows it would send a GET there
        return status, out


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that rejects our certificate or hangs up is what several tests do on purpose


def _make_handler(server: FakeDateServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 5  # idle keep-alive connections end by themselves

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.settimeout(5)
                self.request.do_handshake()
            super().setup()
            self.connection_id = server._next_connection()

        def _respond(self, method: str) -> None:
            status, headers = server._answer(method, dict(self.headers.items()), self.connection_id)
            body = b"" if status >= 400 else b"ok\n"
            self.send_response_only(status)
            self.send_header("Server", "timeguard-fake")
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._respond("HEAD")

        def do_GET(self) -> None:
            self._respond("GET")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def running(**options: Any) -> Iterator[FakeDateServer]:
    server = FakeDateServer(**options).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def blackhole(host: str = "127.0.0.1") -> Iterator[str]:
    """A URL whose port accepts TCP connections (the kernel completes the handshake) but never answers."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(16)
        yield f"http://{host}:{sock.getsockname()[1]}/"
    finally:
        sock.close()


@contextlib.contextmanager
def refusing(host: str = "127.0.0.1") -> Iterator[str]:
    """A URL whose port refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        yield f"http://{host}:{sock.getsockname()[1]}/"
    finally:
        sock.close()
