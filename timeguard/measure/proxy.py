"""The proxy an HTTP(S) source goes through, from the environment, as curl and requests read it.

``https_proxy``/``HTTPS_PROXY`` for https:// URLs, ``http_proxy``/``HTTP_PROXY`` for http:// ones, ``all_proxy``
for both (lowercase first; ``HTTP_PROXY`` is ignored under CGI, CVE-2016-1000110), and ``no_proxy``/``NO_PROXY``: host
names and their subdomains, ``host:port``, IP addresses and CIDR networks that go direct, ``*`` for all. This is
what the HTTP source did when it ran on requests (``Session.trust_env``), so a host that may reach the Internet only
through a proxy keeps its HTTPS source.

Only ``http://`` proxies are spoken to (an https:// URL through ``CONNECT``, an http:// one in absolute form), with
``user:password@`` as Basic ``Proxy-Authorization``. The source still resolves the proxy's name with a deadline,
verifies the origin's certificate end to end through the tunnel, and stamps its own requests; a proxy adds its
delay to each probe's round trip, which widens the interval but never makes it wrong.

Nothing is read or imported unless a ``*_proxy`` variable is set.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: The longest proxy answer to CONNECT that is read (status line and headers).
_MAX_CONNECT_ANSWER = 64 * 1024


class ProxyError(OSError):
    """The proxy could not be used (bad setting, refused tunnel); the message says which and why, for a person."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An http:// proxy: where it listens, its Basic credentials, and the variable it came from."""

    host: str
    port: int
    variable: str  # e.g. "HTTPS_PROXY" (as set), for messages
    authorization: str | None = None  # the Proxy-Authorization value

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"proxy {host}:{self.port} (from {self.variable})"


def proxy_for(scheme: str, host: str, port: int) -> Proxy | None:
    """The proxy for ``scheme://host:port`` from the environment, or None (no proxy set, or no_proxy matches).

    Raises :class:`ProxyError` for a proxy URL that cannot be used (another scheme, no host, a bad port).
    """
    if not any(name[-6:].lower() == "_proxy" for name in os.environ):
        return None
    from urllib.request import getproxies_environment

    proxies = getproxies_environment()
    key = scheme if proxies.get(scheme) else "all"
    url = proxies.get(key)
    if not url or _bypassed(host, port, proxies.get("no", "")):
        return None
    variable = next((n for n in os.environ if n.lower() == f"{key}_proxy" and os.environ[n] == url), f"{key}_proxy")
    return _parse(url, variable)


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` sends ``host`` direct: ``*``, a name or a parent domain, ``name:port``, an IP or CIDR."""
    host = host.lower()
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        ip = None
    for raw in no_proxy.replace(" ", "").split(","):
        entry = raw.lower().lstrip(".")
        if not entry:
            continue
        if entry == "*":
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, _, entry_port = entry.partition(":")
        if (host == name or host.endswith("." + name)) and (not entry_port or entry_port == str(port)):
            return True
    return False


def _parse(url: str, variable: str) -> Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")  # requests' default scheme for a bare host:port
    shown = f"{variable}={parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if _port_ok(parts) else "")
    if parts.scheme.lower() != "http":
        raise ProxyError(f"{shown}: only http:// proxies are supported, not {parts.scheme}://")
    if not parts.hostname:
        raise ProxyError(f"{variable} is not a proxy URL with a host (expected http://host:port)")
    if not _port_ok(parts):
        raise ProxyError(f"{shown}: the port is not a number from 1 to 65535")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, variable, authorization)


def _port_ok(parts: object) -> bool:
    try:
        port = parts.port  # type: ignore[attr-defined]
    except ValueError:
        return False
    return port is None or 1 <= port <= 65535


def tunnel(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    """Ask ``proxy`` (connected on ``sock``) for a ``CONNECT`` tunnel to ``host:port``; raises ProxyError if refused.

    Reads the answer byte-wise up to its blank line, so not a byte of the origin's TLS handshake is consumed.
    """
    name = host if host.isascii() else host.encode("idna").decode("ascii")
    target = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    answer = bytearray()
    while not answer.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ProxyError(f"{proxy} closed the connection instead of answering CONNECT {target}")
        answer += byte
        if len(answer) > _MAX_CONNECT_ANSWER:
            raise ProxyError(f"{proxy} answered CONNECT {target} with more than {_MAX_CONNECT_ANSWER} bytes of headers")
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    status, _, why = rest.partition(" ")
    if not version.startswith("HTTP/") or not status.isdigit():
        raise ProxyError(f"{proxy} did not answer CONNECT {target} in HTTP: {status_line[:80]!r}")
    if not 200 <= int(status) < 300:
        raise ProxyError(f"{proxy} refused the tunnel to {target}: {status} {why}".rstrip())
