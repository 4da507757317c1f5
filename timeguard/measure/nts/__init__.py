"""Network Time Security (RFC 8915): NTS-KE over TLS 1.3, then NTP requests authenticated with AES-SIV.

``records`` and ``extensions`` are pure codecs; ``ke`` does the key exchange (pyOpenSSL), ``source`` holds a
session's keys and cookies and measures through the plain NTP client (measure/ntp.py) with the NTS fields around
its packets. Everything here needs the ``nts`` extra (pyOpenSSL, cryptography) and is imported only when an NTS
source is configured: this package's ``__init__`` imports neither.
"""

from __future__ import annotations

import importlib.util

EXTRA_HINT = "pip install 'timeguard[nts]'"
_NEEDED = ("OpenSSL", "cryptography")


def missing_extra() -> str | None:
    """Why NTS sources cannot run here (the extra is not installed), or None; imports nothing."""
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"NTS sources need {' and '.join(missing)}, which are not installed: {EXTRA_HINT}"
