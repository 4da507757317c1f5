"""A fake NTS-KE server (pyOpenSSL, server side) for the answers a real chronyd never gives: error and warning
records, unknown critical records, no ALPN, TLS 1.2 only, a certificate for another name, a server that accepts
and then hangs. Each connection gets the same behaviour; ``connections`` counts them.
"""

from __future__ import annotations

import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from OpenSSL import SSL

from timeguard.measure.nts.records import Record, RecordType, u16_list


def good_records(cookies: int = 8) -> list[Record]:
    """What an honest server answers: NTPv4, AES-SIV-CMAC-256, cookies, End of Message."""
    return [
        Record(RecordType.NEXT_PROTOCOL, True, u16_list([0])),
        Record(RecordType.AEAD, True, u16_list([15])),
        *[Record(RecordType.NEW_COOKIE, False, bytes([i]) * 100) for i in range(cookies)],
        Record(RecordType.END_OF_MESSAGE, True, b""),
    ]


@dataclass
class FakeKeServer:
    cert: Path
    key: Path
    records: list[Record] = field(default_factory=good_records)
    alpn: bytes | None = b"ntske/1"  # None: the server negotiates no ALPN at all
    max_tls: int | None = None  # e.g. SSL.TLS1_2_VERSION
    hang: str | None = None  # "accept": never handshake; "request": handshake, read the request, answer nothing
    connections: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def __enter__(self) -> FakeKeServer:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self._spawn(self._accept)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate_chain_file(str(self.cert))
        ctx.use_privatekey_file(str(self.key))
        if self.max_tls is not None:
            ctx.set_max_proto_version(self.max_tls)
        if self.alpn is not None:
            alpn = self.alpn
            ctx.set_alpn_select_callback(lambda _conn, _offered: alpn)
        return ctx

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        with client:
            if self.hang == "accept":
                self._stop.wait()
                return
            client.setblocking(True)  # pyOpenSSL on a socket with a timeout would raise WantReadError
            conn = SSL.Connection(self._context(), client)
            conn.set_accept_state()
            try:
                conn.do_handshake()
                request = b""
                while not request.endswith(b"\x80\x00\x00\x00"):  # the client's End of Message
                    request += conn.recv(4096)
                if self.hang == "request":
                    self._stop.wait()
                    return
                conn.sendall(b"".join(r.pack() for r in self.records))
                conn.shutdown()
            except (SSL.Error, OSError):
                return  # the client refused us (wrong ALPN, TLS version, name): that is the test's point
