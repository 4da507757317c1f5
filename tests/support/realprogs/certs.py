"""A throw-away test CA and a server certificate for loopback HTTPS servers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import NamedTuple


class TlsFiles(NamedTuple):
    ca_bundle: Path
    cert: Path
    key: Path


def make_test_ca(tmpdir: Path | str, *, names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
                 not_before: datetime | None = None, not_after: datetime | None = None) -> TlsFiles:
    """A throw-away CA (trustme) and a server certificate for ``names`` (by default ``localhost``, ``127.0.0.1``
    and ``::1``), valid from ``not_before`` to ``not_after`` when given (an expired one, for the NTS tests)."""
    import trustme  # imported here: only HTTPS tests need it

    out = Path(tmpdir)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
    files = TlsFiles(out / "ca.pem", out / "server.crt", out / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_bundle))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    files.key.touch(mode=0o600)
    leaf.private_key_pem.write_to_path(str(files.key))
    return files
