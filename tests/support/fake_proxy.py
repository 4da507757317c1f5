"""An in-test HTTP proxy on loopback: ``CONNECT`` tunnels and absolute-form requests, as squid or tinyproxy serve.

It records what it was asked (``requests``: the CONNECT target or the absolute URL, with the Proxy-Authorization
header) and relays bytes in both directions without looking at them, so TLS through a tunnel is end to end. With
``refuse`` it answers every request with that status line instead (e.g. ``"407 Proxy Authentication Required"``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class FakeProxy:
    refuse: str | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, target, authorization)
    _server: socketserver.ThreadingTCPServer | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeProxy:
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    byte = self.rfile.read(1)
                    if not byte:
                        return
                    head += byte
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                proxy.requests.append((method, target, headers.get("proxy-authorization")))
                if proxy.refuse:
                    self.wfile.write(f"HTTP/1.1 {proxy.refuse}\r\nContent-Length: 0\r\n\r\n".encode())
                    return
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:  # absolute form: pass the request on as it came (the origin server accepts it)
                    parts = urlsplit(target)
                    upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=5)
                    upstream.sendall(head)
                relay(self.connection, upstream)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or 5 s of silence)."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], 5)
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()


@contextlib.contextmanager
def proxying(**options: object) -> Iterator[FakeProxy]:
    proxy = FakeProxy(**options).start()  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.stop()
