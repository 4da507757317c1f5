"""NTS keys and cookies kept across daemon restarts, as chrony keeps them in its ``ntsdumpdir``.

Without it every start of the daemon makes a key exchange (a TLS 1.3 handshake) with every NTS server; a fleet
restarted together (a package upgrade) would hit the public NTS-KE servers at once. The daemon writes
``<state_dir>/nts-keys.json`` when it stops and reads it when it starts: per server (host, NTP port, KE port, CA
bundle) the AEAD keys, the cookies not yet spent, the NTP server the KE named, the certificate chain's validity
(every later sample is still judged against it) and the age of the key exchange.

The file holds the keys that authenticate the servers' replies, so it is written 0600 by an atomic rename, and a
file another user could read or write (another owner, group/other permission bits) is not believed: a key exchange
is made instead. Nothing else depends on it — an unreadable, malformed or foreign file, an entry of a server no
longer configured, stale cookies (the server answers them with a crypto-NAK) all cost one key exchange, never a
measurement. Each problem is reported with the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

FILENAME = "nts-keys.json"
FORMAT = "timeguard-nts-keys/1"
#: Longer cookies than any server sends (chrony's are 104 bytes at most); a bigger one is not a cookie.
MAX_COOKIE_BYTES = 1024


class KeepError(Exception):
    """The file could not be written (the daemon logs it; the next start makes key exchanges)."""


class Kept(Protocol):
    """What a session gives to and takes from the file (measure/nts/source.py's NtsSession)."""

    @property
    def endpoint(self) -> tuple[str, int, int, str | None]: ...

    def export(self) -> dict[str, Any] | None: ...

    def adopt(self, ke: Any, cookies: list[bytes], age_s: float) -> bool: ...


def save(path: Path, sessions: Iterable[Kept]) -> int:
    """Write every session that holds keys and cookies; returns how many. Raises KeepError."""
    entries = [entry for session in sessions if (entry := session.export()) is not None]
    text = json.dumps({"format": FORMAT, "sessions": entries}, indent=1) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600 from the start
    except OSError as exc:
        raise KeepError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise KeepError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return len(entries)


def load(path: Path, sessions: Iterable[Kept]) -> tuple[int, list[str]]:
    """Give each session the keys the file kept for its server; returns (sessions restored, problems). Never
    raises: a problem is a key exchange more, said with the file and the field."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0, []
    except OSError as exc:
        return 0, [f"{path}: cannot read ({exc.strerror or exc})"]
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return 0, [f"{path}: not a regular file"]
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            return 0, [f"{path}: owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}: keys another "
                       f"user could read or write are not believed (it must be the daemon's own, 0600)"]
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(1 << 20)
    except OSError as exc:
        return 0, [f"{path}: cannot read ({exc.strerror or exc})"]
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return 0, [f"{path}: not UTF-8 text (byte {exc.start})"]
    except json.JSONDecodeError as exc:
        return 0, [f"{path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"]
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        return 0, [f"{path}: format {found!r}, not {FORMAT!r}"]
    entries = data.get("sessions")
    if not isinstance(entries, list):
        return 0, [f"{path}: sessions: not a list"]
    by_endpoint = {s.endpoint: s for s in sessions}
    problems, restored = [], 0
    for i, entry in enumerate(entries):
        try:
            endpoint, ke, cookies, age_s = _parse(entry)
        except ValueError as exc:
            problems.append(f"{path}: sessions[{i}]{exc}")
            continue
        session = by_endpoint.get(endpoint)
        if session is not None and session.adopt(ke, cookies, age_s):
            restored += 1
    return restored, problems


def _parse(entry: Any) -> tuple[tuple[str, int, int, str | None], Any, list[bytes], float]:
    """One entry as (endpoint, KeResult, cookies, age of the key exchange); ValueError(".field: why")."""
    from timeguard.measure.nts.ke import KEY_BYTES, KeResult, Validity
    from timeguard.measure.nts.records import Aead
    from timeguard.measure.nts.source import JAR_SIZE

    if not isinstance(entry, Mapping):
        raise ValueError(": not a mapping")
    host, ntp_host, address = (_text(entry, k) for k in ("host", "ntp_host", "address"))
    port, ke_port, ntp_port = (_port(entry, k) for k in ("port", "ke_port", "ntp_port"))
    ca_bundle = entry.get("ca_bundle")
    if ca_bundle is not None and not isinstance(ca_bundle, str):
        raise ValueError(".ca_bundle: not a path or null")
    try:
        aead = Aead(entry.get("aead"))
    except ValueError:
        raise ValueError(f".aead: {_shown(entry.get('aead'))} is not an AEAD algorithm timeguard speaks") from None
    keys = [_hex(entry.get(k), k, exact=KEY_BYTES[aead]) for k in ("c2s_key", "s2c_key")]
    before, after, age_s = (_number(entry, k) for k in ("not_before_s", "not_after_s", "ke_age_s"))
    if before > after:
        raise ValueError(".not_before_s: after not_after_s")
    if age_s < 0:
        raise ValueError(".ke_age_s: negative")
    cookies = entry.get("cookies")
    if not isinstance(cookies, list) or not cookies:
        raise ValueError(".cookies: not a non-empty list")
    if len(cookies) > JAR_SIZE:
        raise ValueError(f".cookies: {len(cookies)}, more than the {JAR_SIZE} a session keeps")
    jar = [_hex(c, f"cookies[{n}]", limit=MAX_COOKIE_BYTES) for n, c in enumerate(cookies)]
    ke = KeResult(aead=aead, c2s_key=keys[0], s2c_key=keys[1], cookies=tuple(jar), ntp_host=ntp_host,
                  ntp_port=ntp_port, validity=Validity(before, after), address=address,
                  monotonic_s=time.monotonic() - age_s)
    return (host, port, ke_port, ca_bundle), ke, jar, age_s


def _text(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise ValueError(f".{key}: not a host name or address")
    return value


def _port(entry: Mapping[str, Any], key: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f".{key}: {_shown(value)} is not a port from 1 to 65535")
    return value


def _number(entry: Mapping[str, Any], key: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f".{key}: {_shown(value)} is not a finite number")
    return float(value)


def _hex(value: Any, where: str, *, exact: int | None = None, limit: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        data = None
    if data is None:
        raise ValueError(f".{where}: not hexadecimal bytes")
    if exact is not None and len(data) != exact:
        raise ValueError(f".{where}: {len(data)} bytes, not {exact}")
    if not data or (limit is not None and len(data) > limit):
        raise ValueError(f".{where}: {len(data)} bytes")
    return data


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
