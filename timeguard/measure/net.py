"""Name resolution with a deadline of its own.

``socket.getaddrinfo`` has no timeout: a stalled resolver blocks the caller for as long as the resolver
likes (ntplib runs it outside any timeout, research/time_anchors.md §7). A time source must answer
within its deadline even when DNS does not, so the lookup runs in a daemon thread and the caller waits
for it only as long as it can afford. The thread cannot be cancelled; it finishes in the background,
and a later lookup of the same name joins it rather than starting another, so a resolver that hangs
for good costs one thread per name, not one per poll.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass

#: Lookups still running (most likely stalled) beyond which a new name is refused rather than given
#: yet another thread: a resolver that hangs on everything must not grow the process without bound.
MAX_PENDING_LOOKUPS = 32


class ResolveError(Exception):
    """A name could not be turned into addresses in time; the message says why, for a person."""


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    """One address of a host, ready for ``sendto``."""

    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]

    @property
    def ip(self) -> str:
        return self.sockaddr[0]

    @property
    def port(self) -> int:
        return self.sockaddr[1]

    def __str__(self) -> str:
        return format_address(self.sockaddr)

    def matches(self, sockaddr: tuple[object, ...]) -> bool:
        """Whether a packet's source (as ``recvfrom`` returns it) is exactly this address and port."""
        return len(sockaddr) >= 2 and sockaddr[1] == self.port and same_ip(sockaddr[0], self.ip)


def format_address(sockaddr: tuple[object, ...]) -> str:
    """``127.0.0.1:123`` or ``[::1]:123`` — the form a person pastes into another tool."""
    host, port = str(sockaddr[0]), sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def same_ip(a: object, b: object) -> bool:
    """Compare two textual IPs by value (``::1`` == ``0:0::1``), ignoring an IPv6 zone suffix."""
    try:
        return ipaddress.ip_address(str(a).split("%", 1)[0]) == ipaddress.ip_address(str(b).split("%", 1)[0])
    except ValueError:
        return a == b


def resolve(
    host: str,
    port: int,
    *,
    timeout_s: float,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    socktype: socket.SocketKind = socket.SOCK_DGRAM,
) -> tuple[ResolvedAddress, ...]:
    """The addresses of ``host`` in the resolver's preference order (RFC 6724), IPv4 and IPv6.

    Waits at most ``timeout_s`` for DNS. Raises :class:`ResolveError` with a reason a person can act on
    when the name is unknown, the resolver fails, or it does not answer in time; never blocks longer.
    """
    if not 0 <= port <= 65535:
        raise ResolveError(f"port {port} is out of range (0–65535)")
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):  # "[::1]" as people write it next to a port
        name = name[1:-1]
    if not name:
        raise ResolveError("empty host name")
    if _is_literal(name):
        # A literal needs no lookup, so no thread and no deadline: AI_NUMERICHOST never queries DNS.
        return _collect(name, _getaddrinfo(name, port, family, socktype, socket.AI_NUMERICHOST))
    lookup = _Lookup.start(name, port, family, socktype)
    if not lookup.done.wait(max(timeout_s, 0.0)):
        raise ResolveError(
            f"DNS lookup of {name!r} did not answer within {timeout_s:.1f} s (resolver stalled or "
            "unreachable; check /etc/resolv.conf and the DNS server)"
        )
    if lookup.error is not None:
        # A fresh exception per waiter: several callers may share one lookup and its error.
        raise ResolveError(str(lookup.error))
    return _collect(name, lookup.result)


def _is_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _getaddrinfo(
    name: str, port: int, family: socket.AddressFamily, socktype: socket.SocketKind, flags: int
) -> list[tuple[object, ...]]:
    try:
        return list(socket.getaddrinfo(name, port, family, socktype, 0, flags))
    except socket.gaierror as exc:
        raise ResolveError(_gai_reason(name, exc)) from exc
    except (OSError, UnicodeError) as exc:  # e.g. an IDNA label too long
        raise ResolveError(f"DNS lookup of {name!r} failed: {exc}") from exc


def _gai_reason(name: str, exc: socket.gaierror) -> str:
    if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
        return f"host name {name!r} not found in DNS (check the spelling and the resolver)"
    if exc.errno == socket.EAI_AGAIN:
        return f"DNS lookup of {name!r} failed temporarily: the resolver did not give an answer; retry later"
    if exc.errno in (getattr(socket, "EAI_ADDRFAMILY", None), socket.EAI_FAMILY):
        return f"host name {name!r} has no address of the requested family"
    return f"DNS lookup of {name!r} failed: {exc.strerror or exc}"


def _collect(name: str, infos: list[tuple[object, ...]]) -> tuple[ResolvedAddress, ...]:
    seen: set[tuple[object, ...]] = set()
    out: list[ResolvedAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(sockaddr, tuple):
            continue
        if sockaddr in seen:  # getaddrinfo repeats an address once per protocol it knows
            continue
        seen.add(sockaddr)
        out.append(ResolvedAddress(socket.AddressFamily(family), sockaddr))  # type: ignore[arg-type]
    if not out:
        raise ResolveError(f"DNS lookup of {name!r} returned no IPv4 or IPv6 address")
    return tuple(out)


class _Lookup:
    """One getaddrinfo call in a daemon thread, shared by everyone asking for the same name meanwhile."""

    _pending: dict[tuple[str, int, int, int], _Lookup] = {}  # noqa: RUF012 - a registry, on purpose shared
    _lock = threading.Lock()

    def __init__(self, key: tuple[str, int, int, int]) -> None:
        self.key = key
        self.done = threading.Event()
        self.result: list[tuple[object, ...]] = []
        self.error: ResolveError | None = None

    @classmethod
    def start(cls, name: str, port: int, family: socket.AddressFamily, socktype: socket.SocketKind) -> _Lookup:
        key = (name.lower(), port, int(family), int(socktype))
        with cls._lock:
            existing = cls._pending.get(key)
            if existing is not None:
                return existing
            if len(cls._pending) >= MAX_PENDING_LOOKUPS:
                raise ResolveError(
                    f"DNS lookup of {name!r} not started: {len(cls._pending)} earlier lookups are still "
                    "stalled (the resolver is not answering)"
                )
            lookup = cls(key)
            cls._pending[key] = lookup
        thread = threading.Thread(
            target=lookup._run, args=(name, port, family, socktype), name=f"timeguard-dns:{name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # cannot start a thread (interpreter shutting down, limits)
            with cls._lock:
                cls._pending.pop(key, None)
            raise ResolveError(f"DNS lookup of {name!r} not started: {exc}") from exc
        return lookup

    def _run(self, name: str, port: int, family: socket.AddressFamily, socktype: socket.SocketKind) -> None:
        try:
            self.result = _getaddrinfo(name, port, family, socktype, 0)
        except ResolveError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - a waiter must always be woken, with a reason
            self.error = ResolveError(f"DNS lookup of {name!r} failed: {exc!r}")
        finally:
            with self._lock:
                if self._pending.get(self.key) is self:
                    del self._pending[self.key]
            self.done.set()
