"""An on-path attacker for NTP over UDP on loopback: a relay between a client and a real server that can forge,
replay or drop the server's replies (the NTS tests: an authenticated source must refuse every one of them).

The relay listens on its own loopback address and forwards each request to the upstream server from a socket of
its own, then hands the reply back according to ``mode``:

* ``pass``: unchanged;
* ``forge``: the reply's transmit timestamp moved by +1 s (what an attacker steering a clock does) — the origin
  is left alone, so only authentication can tell;
* ``replay``: the request is forwarded but the client gets, instead of the answer, the first reply the relay ever
  relayed (an old, authentic answer to an earlier request);
* ``duplicate``: every reply is delivered twice;
* ``drop``: nothing comes back.
"""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class OnPathRelay:
    listen: tuple[str, int]
    upstream: tuple[str, int]
    mode: str = "pass"
    relayed: int = 0  # replies the client got (as the mode made them)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _first: bytes | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> OnPathRelay:
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(self.listen)
        self._back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._back.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._run, name="onpath-relay", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._front.close()
        self._back.close()

    def _run(self) -> None:
        clients: list[tuple[str, int]] = []
        while not self._stop.is_set():
            ready, _, _ = select.select([self._front, self._back], [], [], 0.05)
            for sock in ready:
                data, peer = sock.recvfrom(4096)
                if sock is self._front:
                    clients.append(peer)
                    self._back.sendto(data, self.upstream)
                elif clients:
                    self._answer(data, clients.pop(0))

    def _answer(self, reply: bytes, client: tuple[str, int]) -> None:
        out: bytes | None = reply
        if self._first is None:
            self._first = reply
        if self.mode == "forge":
            transmit = int.from_bytes(reply[40:48], "big")
            out = reply[:40] + ((transmit + (1 << 32)) % (1 << 64)).to_bytes(8, "big") + reply[48:]
        elif self.mode == "replay":
            out = self._first
        elif self.mode == "duplicate":
            self._front.sendto(reply, client)
        elif self.mode == "drop":
            out = None
        if out is not None:
            self._front.sendto(out, client)
            self.relayed += 1
