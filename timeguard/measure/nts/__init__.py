"""Network Time Security (RFC 8915): NTS-KE over TLS 1.3, then NTP requests authenticated with AES-SIV.

``records`` and ``extensions`` are pure codecs; ``ke`` does the key exchange (pyOpenSSL), ``source`` holds a
session's keys and cookies and measures through the plain NTP client (measure/ntp.py) with the NTS fields around
its packets; ``keep`` saves a session's keys and cookies for the daemon's next start. Everything here needs the
``nts`` extra (pyOpenSSL, cryptography; config.missing_nts_extra says when it is missing) and is imported only when
an NTS source is configured: this package's ``__init__`` imports neither.
"""
