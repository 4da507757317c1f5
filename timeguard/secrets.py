"""Secrets: hiding them wherever something is shown, and reading them only where they are used.

Redaction — one rule for everything timeguard prints, logs or stores (``config show``, the journal, ``--json``):

* a URL keeps its scheme, user, host, port and path; its password (``user:***@host``) and the value of every
  query parameter named like a secret (``?password=***``, ``token``, ``key``, ``sig``…) are replaced by ``***``;
* a Slack incoming-webhook URL is a secret as a whole: its path too (``https://hooks.slack.com/***``);
* in a mapping, the value of a key named like a secret (``password``, ``secret``, ``token``, ``Authorization``,
  ``api_key``, ``DB_PASSWORD``…) is replaced by ``***``; keys ending in ``_env``/``_file`` only say *where* a
  secret is (a variable's name, a path) and are shown; so are ``{env: VAR}``/``{file: PATH}`` references.

:func:`redact_url` gives the same text for the same URL every time (it can be part of a stored identity, such as
a repair's fingerprint); :func:`redact_text` applies it to every URL inside free text (an error message).

Deferred reading — a secret that exists only inside the service (``/run/credentials/…``, an environment variable
the unit sets) cannot be read from a shell or by Icinga. Validation then runs inside :func:`deferring`: a hook's
``from_config`` calls :func:`defer` for a secret it cannot read, which records it (``config validate`` prints it
as a warning) instead of failing; the secret is read for real where it is used (``run``, ``hooks test``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

MASK = "***"

# A key (or query parameter) whose value is a secret: matched on the name lower-cased, separators removed.
_SECRET_NAME = re.compile(r"passw|passphrase|pwd|secret|token|auth|credential|cookie|apikey|privatekey|"
                          r"accesskey|signingkey|signature|dsn")
_SECRET_PARAMS = frozenset({"key", "sig", "pw", "pass", "code"})
_REFERENCE_SUFFIXES = ("_env", "_file", "_path", "_var")
# In free text: a URL, or a `password=…` assignment outside one (one pass: a URL is never looked at twice).
_IN_TEXT = re.compile(r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+)"
                      r"|(?i:\b(?P<name>\w*(?:password|passwd|pwd|secret|token))(?P<eq>\s*=\s*)[^\s&;,'\"]+)")
_SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")


def is_secret_name(name: object) -> bool:
    """Is ``name`` (a config key, header, variable or query parameter) named like something that holds a secret?
    A name ending in ``_env``/``_file``/``_path``/``_var`` is where a secret *is*, not the secret."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    if lowered.endswith(_REFERENCE_SUFFIXES):
        return False
    compact = re.sub(r"[^a-z0-9]", "", lowered)
    return bool(_SECRET_NAME.search(compact)) or compact in _SECRET_PARAMS


def redact_url(url: str, *, hide_path: bool = False) -> str:
    """``url`` without its secrets: the password and secret-named query values become ``***``; with
    ``hide_path`` (or for a Slack incoming webhook) the path and the whole query too. Text that is not a URL
    with a scheme is returned unchanged."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if not parsed.scheme or "//" not in url[: len(parsed.scheme) + 3]:
        return url
    netloc = parsed.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
    hostname = (parsed.hostname or "").lower()
    if hide_path or hostname in _SLACK_HOSTS:
        path = f"/{MASK}" if parsed.path not in ("", "/") else parsed.path
        query = MASK if parsed.query else ""
        fragment = ""
    else:
        path = parsed.path
        query = _redact_query(parsed.query)
        fragment = _redact_query(parsed.fragment) if "=" in parsed.fragment else parsed.fragment
    # Assembled by hand: urlunsplit would turn sqlite:////abs/path into sqlite://abs/path.
    return (f"{url[: len(parsed.scheme)]}://{netloc}{path}" + (f"?{query}" if query or "?" in url else "")
            + (f"#{fragment}" if fragment or "#" in url else ""))


def _redact_query(query: str) -> str:
    if not query:
        return query
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        plain = urllib.parse.unquote_plus(name)
        parts.append(f"{name}={MASK}" if eq and is_secret_name(plain) else item)
    return "&".join(parts)


def redact_text(text: str) -> str:
    """Free text (an error message, a command line) with every URL in it redacted (:func:`redact_url`) and every
    ``password=…`` (libpq keyword DSN) or ``token=…`` assignment masked."""
    return _IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    url = match.group("url")
    if url is None:
        return f"{match.group('name')}{match.group('eq')}{MASK}"
    core = url.rstrip(".,:;!?)]}")  # the sentence's punctuation after a URL is not part of it
    shown, tail = redact_url(core), url[len(core):]
    if shown.endswith(MASK):
        # ... unless the URL ends in a secret: '.', '!' and '?' may be its last characters (they are legal
        # unencoded in a value); the mask takes them rather than show part of the secret.
        tail = tail.lstrip(".!?")
    return shown + tail


def redact(data: Any, *, key: object = None) -> Any:
    """Configuration data (as ``config show`` prints it) with its secrets masked, for any nesting of mappings
    and lists. ``key`` is the name the value is found under (decides whether the value is a secret)."""
    if isinstance(data, Mapping):
        if set(data) in ({"env"}, {"file"}):  # a {env: VAR} / {file: PATH} reference, not a secret
            return dict(data)
        return {k: redact(v, key=k) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact(v, key=key) for v in data]
    if isinstance(data, bool) or data is None:
        return data
    if is_secret_name(key) and isinstance(data, str | int | float):
        return MASK
    if isinstance(data, str):
        if isinstance(key, str) and key.lower() == "webhook_url":  # Slack's option: the whole URL is the secret
            return redact_url(data, hide_path=True)
        return redact_text(data)
    return data


# -------------------------------------------------------------------------------------------- deferral


class Unresolved(Exception):
    """Raised by a hook's ``from_config`` (only inside :func:`deferring`) when it cannot check more without a
    secret it deferred: the options it could check are fine."""


_deferred: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("timeguard_deferred",
                                                                                         default=None)


@contextlib.contextmanager
def deferring() -> Iterator[list[tuple[str, str]]]:
    """Within: secrets that cannot be read are recorded as ``(key, why)`` in the yielded list, not errors."""
    found: list[tuple[str, str]] = []
    token = _deferred.set(found)
    try:
        yield found
    finally:
        _deferred.reset(token)


def defer(key: str, why: str) -> bool:
    """A secret under ``key`` cannot be read (``why``). Inside :func:`deferring`: record it, return True (not an
    error here); outside: return False (the caller reports it as the error it is)."""
    found = _deferred.get()
    if found is None:
        return False
    found.append((key, why))
    return True


def deferred_so_far() -> list[tuple[str, str]]:
    """The ``(key, why)`` recorded by :func:`defer` so far in this :func:`deferring` block (a copy; empty outside)."""
    found = _deferred.get()
    return list(found) if found is not None else []


def credential_path(path_text: str) -> tuple[Path | None, str | None]:
    """A secret file's path: ``$CREDENTIALS_DIRECTORY/x`` expanded; a relative path is inside it (systemd
    ``LoadCredential=``)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    for prefix in ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"):
        if path_text.startswith(prefix):
            if not creds:
                return None, "uses $CREDENTIALS_DIRECTORY, which is not set (systemd sets it with LoadCredential=)"
            return Path(creds) / path_text[len(prefix):].lstrip("/"), None
    path = Path(path_text)
    if not path.is_absolute():
        if not creds:
            return None, ("is relative, which means inside $CREDENTIALS_DIRECTORY, and that is not set "
                          "(use LoadCredential= in the unit, or an absolute path)")
        path = Path(creds) / path
    return path, None
