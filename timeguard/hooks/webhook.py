"""``type: webhook`` — the event POSTed as JSON, signed the Standard Webhooks way, through the durable outbox.

Configuration::

    - type: webhook
      name: ops-webhook
      url: https://alerts.example.net/timeguard      # https; http only with allow_plain_http: true
      format: json                                   # or alertmanager (Alertmanager webhook v4 shape)
      secret_file: webhook-secret                    # whsec_<base64>; relative: in $CREDENTIALS_DIRECTORY
      # secret_env: TIMEGUARD_WEBHOOK_SECRET         # or from the environment (never inline in the config)
      headers: {X-Team: infra, Authorization: {env: ALERT_TOKEN}}   # a value may come from {env:} or {file:}
      ca_bundle: /etc/timeguard/alerts-ca.pem        # to trust a private CA
      request_timeout_s: 15

Default ``on:`` — what an operator is paged for: the clock stepped (``rollback``, ``rollback_while_down``,
``forward_jump``), it is far off (``offset_critical``), it cannot be trusted or checked
(``sources_inconsistent``, ``sources_unavailable``), application state was written in the future
(``future_state_found``) or is being written there now (``future_state_accruing``: the clock is ahead and
a scheduler runs), and ``recovered`` to close what was opened. Not ``offset_warning`` (it comes and goes
with network jitter: a metric, not a page) nor ``leap`` (expected, announced). A ``recovered`` event is sent only
when this hook alerted on the incident it closes.

The signature's ``webhook-timestamp`` is the *trusted* time at the moment of sending: these alerts go out
exactly when the host clock is wrong, and a receiver checking the timestamp with the standard ±5 min tolerance
would reject one stamped with the host's clock. Only without a verdict (no trusted time at all) does the
host clock stand in; the ``timeguard-time-source: trusted|host`` header says which. The body carries both the
host time and the trusted time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from timeguard import __version__, secrets
from timeguard.events import Event, EventKind
from timeguard.hooks.api import (
    Delivery,
    DeliveryResult,
    HookConfigError,
    HookContext,
    HookResult,
    convert_options,
    option,
)
from timeguard.hooks.outbox import split_payload
from timeguard.measure.httpdate import HttpDateError, parse_http_date
from timeguard.timefmt import iso

DEFAULT_REQUEST_TIMEOUT_S = 15.0
MAX_REQUEST_TIMEOUT_S = 300.0
SECRET_PREFIX = "whsec_"  # noqa: S105 — the Standard Webhooks prefix, not a secret
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64  # the Standard Webhooks range
MAX_ERROR_BODY = 4096
AM_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert

DEFAULT_ON: frozenset[EventKind] = frozenset({
    EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN, EventKind.FORWARD_JUMP, EventKind.OFFSET_CRITICAL,
    EventKind.SOURCES_INCONSISTENT, EventKind.SOURCES_UNAVAILABLE, EventKind.FUTURE_STATE_FOUND,
    EventKind.FUTURE_STATE_ACCRUING, EventKind.RECOVERED,
})

SEVERITY: Mapping[EventKind, str] = {
    EventKind.ROLLBACK: "critical",
    EventKind.ROLLBACK_WHILE_DOWN: "critical",
    EventKind.FORWARD_JUMP: "warning",
    EventKind.LEAP: "info",
    EventKind.OFFSET_WARNING: "warning",
    EventKind.OFFSET_CRITICAL: "critical",
    EventKind.SOURCES_INCONSISTENT: "critical",  # a lying or spoofed source: nothing can be repaired safely
    EventKind.SOURCES_UNAVAILABLE: "warning",
    EventKind.RECOVERED: "info",
    EventKind.FUTURE_STATE_FOUND: "critical",
    EventKind.FUTURE_STATE_ACCRUING: "critical",
    EventKind.TEST: "info",
}

ALERT_NAMES: Mapping[EventKind, str] = {
    EventKind.ROLLBACK: "ClockRollback",
    EventKind.ROLLBACK_WHILE_DOWN: "ClockRollbackWhileDown",
    EventKind.FORWARD_JUMP: "ClockForwardJump",
    EventKind.LEAP: "ClockLeapSecond",
    EventKind.OFFSET_WARNING: "ClockOffsetWarning",
    EventKind.OFFSET_CRITICAL: "ClockOffsetCritical",
    EventKind.SOURCES_INCONSISTENT: "TimeSourcesInconsistent",
    EventKind.SOURCES_UNAVAILABLE: "TimeSourcesUnavailable",
    EventKind.RECOVERED: "ClockRecovered",
    EventKind.FUTURE_STATE_FOUND: "FutureStateFound",
    EventKind.FUTURE_STATE_ACCRUING: "FutureStateAccruing",
    EventKind.TEST: "TimeguardTest",
}

# Headers timeguard sets itself: a configured header must not replace them.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "user-agent", "webhook-id",
                               "webhook-timestamp", "webhook-signature", "timeguard-time-source"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# ------------------------------------------------------------------------------------------ presentation
# Shared with the Slack hook: what an alert says, whatever it is rendered as.


def human_duration(seconds: float, *, signed: bool = True) -> str:
    """``−180.0 days``, ``+3.0 hours``, ``−12.5 s``, ``+250 ms`` (U+2212 minus: a person reads it)."""
    sign = ("−" if seconds < 0 else "+") if signed else ""
    a = abs(seconds)
    if a < 1:
        text = f"{a * 1000:.0f} ms"
    elif a < 120:
        text = f"{a:.1f} s"
    elif a < 2 * 3600:
        text = f"{a / 60:.1f} min"
    elif a < 2 * 86400:
        text = f"{a / 3600:.1f} hours"
    else:
        text = f"{a / 86400:.1f} days"
    return sign + text


def severity(event: Event) -> str:
    if event.kind is EventKind.FUTURE_STATE_ACCRUING and _guard_done(event):
        return "info"  # every scheduler the guard stopped was repaired and started again: the all-clear
    return SEVERITY.get(event.kind, "warning")


def _guard_done(event: Event) -> bool:
    stores = event.detail.get("stores")
    return isinstance(stores, list) and bool(stores) and all(
        isinstance(s, dict) and s.get("action") == "started" for s in stores)


def previous_kind(event: Event) -> EventKind | None:
    """For ``recovered``: the condition it ends (the agent puts it in ``detail["previous"]``)."""
    try:
        return EventKind(event.detail.get("previous")) if event.detail.get("previous") else None
    except ValueError:
        return None


def alert_name(event: Event) -> str:
    if event.kind is EventKind.RECOVERED and (prev := previous_kind(event)) is not None:
        return ALERT_NAMES.get(prev, "ClockRecovered")  # the resolved alert matches the one that fired
    return ALERT_NAMES.get(event.kind, "TimeguardEvent")


def headline(event: Event) -> str:
    """One line: what happened (without the host)."""
    step = event.step_s
    verdict = event.verdict or {}
    offset = verdict.get("offset_s")
    match event.kind:
        case EventKind.ROLLBACK:
            return f"Clock rolled back {human_duration(step)}" if step is not None else "Clock rolled back"
        case EventKind.ROLLBACK_WHILE_DOWN:
            bound = "at least " if event.detail.get("lower_bound") else ""
            size = f" {bound}{human_duration(step)}" if step is not None else ""
            return f"Clock rolled back{size} while timeguard was not running"
        case EventKind.FORWARD_JUMP:
            return f"Clock jumped forward {human_duration(step)}" if step is not None else "Clock jumped forward"
        case EventKind.LEAP:
            return "Leap second"
        case EventKind.OFFSET_WARNING | EventKind.OFFSET_CRITICAL:
            level = "critical" if event.kind is EventKind.OFFSET_CRITICAL else "warning"
            if isinstance(offset, int | float):
                direction = "behind" if offset > 0 else "ahead of"
                return f"Clock is {human_duration(offset, signed=False)} {direction} trusted time ({level})"
            return f"Clock offset {level}"
        case EventKind.SOURCES_INCONSISTENT:
            return "Time sources disagree: the clock cannot be trusted"
        case EventKind.SOURCES_UNAVAILABLE:
            return "No usable time sources: the clock cannot be checked"
        case EventKind.RECOVERED:
            prev = previous_kind(event)
            return f"Recovered: clock cross-check OK again (after {prev.value})" if prev else "Recovered"
        case EventKind.FUTURE_STATE_FOUND:
            return "Application state stamped in the future found"
        case EventKind.FUTURE_STATE_ACCRUING:
            return accruing_headline(event)
        case EventKind.TEST:
            return "Test alert from timeguard"
    return str(event.kind.value)


def accruing_headline(event: Event) -> str:
    """``future_state_accruing``: which schedulers, and what the guard did to each."""
    stores = event.detail.get("stores")
    if not isinstance(stores, list) or not stores:
        return "Clock ahead: schedulers are stamping the future"
    verbs = {"stopped": "stopped", "alerting": "still running", "stop_failed": "STOP FAILED, still running",
             "started": "started again", "released": "started UNREPAIRED (guard removed)",
             "start_failed": "START FAILED, still stopped"}
    parts = [f"{s.get('hook')} ({s.get('where') or s.get('target')}): {verbs.get(s.get('action'), s.get('action'))}"
             for s in stores if isinstance(s, dict)]
    ahead = event.detail.get("ahead_s")
    if isinstance(ahead, int | float):
        return f"Clock {human_duration(ahead, signed=False)} ahead, schedulers stamp the future: " + "; ".join(parts)
    return "Scheduler guard: " + "; ".join(parts)


def event_time(event: Event, ctx: HookContext) -> tuple[float, str]:
    """When the event happened on the trusted timeline, and whether that is ``"trusted"`` or only ``"host"``."""
    if event.trusted_time_s is not None:
        return event.trusted_time_s, "trusted"
    try:
        now = ctx.trusted_now()
    except Exception:  # noqa: BLE001 — the agent's callback failing must not lose the alert
        now = None
    if now is not None:
        since = time.monotonic() - event.monotonic_s
        return (now - since if 0 <= since < 3600 else now), "trusted"
    return event.wall_time_s, "host"


def incident_start(event: Event, ctx: HookContext) -> tuple[float, str]:
    """The trusted time of the incident's first event (stable across updates: Alertmanager's startsAt)."""
    first = event
    if ctx.history is not None:
        try:
            earlier = ctx.history.incident_events(event.incident_id)
            if earlier:
                first = earlier[0]
        except Exception:  # noqa: BLE001 — a journal problem: fall back to this event
            first = event
    return event_time(first, ctx)


def repairs(event: Event) -> list[str]:
    """What repair hooks did, when the event's ``detail["repairs"]`` lists it ({hook, status, summary} or text)."""
    lines = []
    for item in event.detail.get("repairs") or []:
        if isinstance(item, Mapping):
            hook, status, summary = item.get("hook", "?"), item.get("status", "?"), item.get("summary", "")
            lines.append(f"{hook}: {status}" + (f" — {summary}" if summary else ""))
        else:
            lines.append(str(item))
    return lines


def already_alerted(hook: str, event: Event, ctx: HookContext) -> bool:
    """Did ``hook`` queue anything for this incident? (A ``recovered`` is only news to those who heard the alarm.)
    Without a history to ask: yes."""
    if ctx.history is None:
        return True
    try:
        return ctx.history.alerted(hook, event.incident_id)
    except Exception:  # noqa: BLE001 — when unsure, send
        return True


# ----------------------------------------------------------------------------------------------- config


def read_secret(options: Mapping[str, Any], key: str, problems: list[tuple[str, str]], *,
                inline_ok: bool = False, report_as: str | None = None) -> str | None:
    """The secret ``key`` from ``<key>_env`` (an environment variable) or ``<key>_file`` (a file; systemd
    credentials), or inline ``<key>`` where ``inline_ok``. At most one. Messages never contain the secret.

    A variable that is not set or a file that cannot be read may exist only where the service runs: while
    validating outside it (timeguard.secrets.deferring) that is recorded as deferred, not a problem, and None is
    returned; a secret that *is* read and is wrong (empty, malformed) is always a problem. ``report_as``: the
    key to report under instead of the option's own."""
    sources = [k for k in (key, f"{key}_env", f"{key}_file") if k in options]
    if key in options and not inline_ok:
        problems.append((report_as or key, f"inline secrets are refused (configs get copied, shown, committed): "
                                           f"use {key}_env or {key}_file"))
        return None
    if len(sources) > 1:
        problems.append((report_as or sources[1], f"give only one of {', '.join(sources)}"))
        return None
    if not sources:
        return None
    source = sources[0]
    where = report_as or source
    value = options[source]
    if not isinstance(value, str) or not value.strip():
        problems.append((where, f"must be non-empty text, not {type(value).__name__}"))
        return None
    if source == key:
        return value.strip()

    def unreadable(why: str) -> None:
        if not secrets.defer(where, why):
            problems.append((where, why))

    if source.endswith("_env"):
        secret = os.environ.get(value)
        if secret is None:
            unreadable(f"environment variable {value} is not set")
            return None
        if not secret.strip():
            problems.append((where, f"environment variable {value} is empty"))
            return None
        return secret.strip()
    path, why = secrets.credential_path(value)
    if path is None:
        unreadable(f"{value} {why}")
        return None
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        unreadable(f"cannot read {path}: {exc.strerror or type(exc).__name__}")
        return None
    except UnicodeDecodeError:
        problems.append((where, f"{path} is not UTF-8 text"))
        return None
    if not secret:
        problems.append((where, f"{path} is empty"))
        return None
    return secret


def decode_whsec(secret: str, key: str, problems: list[tuple[str, str]]) -> bytes | None:
    """A Standard Webhooks secret: ``whsec_`` then base64 of 24–64 random bytes."""
    if not secret.startswith(SECRET_PREFIX):
        problems.append((key, f"the secret must be a Standard Webhooks secret: '{SECRET_PREFIX}' followed by "
                              "base64 (e.g. python3 -c \"import base64,os;print('whsec_'+base64.b64encode("
                              "os.urandom(32)).decode())\")"))
        return None
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        problems.append((key, f"the part after '{SECRET_PREFIX}' is not valid base64"))
        return None
    if not SECRET_MIN_BYTES <= len(raw) <= SECRET_MAX_BYTES:
        problems.append((key, f"the secret decodes to {len(raw)} bytes; Standard Webhooks wants "
                              f"{SECRET_MIN_BYTES} to {SECRET_MAX_BYTES}"))
        return None
    return raw


def check_url(value: Any, key: str, allow_plain_http: bool, problems: list[tuple[str, str]], *,
              secret: bool = False) -> str | None:
    shown = "the URL" if secret else repr(value)
    if not isinstance(value, str) or not value.strip():
        problems.append((key, "must be an https:// URL"))
        return None
    parsed = urllib.parse.urlsplit(value.strip())
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        problems.append((key, f"{shown} is not an http(s) URL with a host"))
        return None
    if parsed.scheme == "http" and not allow_plain_http:
        problems.append((key, f"{shown} is plain http: alerts and their signatures would travel in the clear; "
                              "use https, or set allow_plain_http: true (e.g. for a receiver on localhost)"))
        return None
    if parsed.username or parsed.password:
        problems.append((key, "credentials in the URL would end up in logs: use headers with {env:} or {file:}"))
        return None
    try:
        _ = parsed.port
    except ValueError:
        problems.append((key, f"{shown} has an invalid port"))
        return None
    return value.strip()


#: A header value or a variable: text, a number, or a secret kept out of the file ({env: VAR} or {file: PATH}).
SECRET_REF_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": ["string", "number"]},
    {"type": "object", "properties": {"env": {"type": "string"}}, "required": ["env"], "additionalProperties": False},
    {"type": "object", "properties": {"file": {"type": "string"}}, "required": ["file"], "additionalProperties": False},
]}


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOptions:
    """The options of a hook that POSTs to a receiver (webhook, Slack)."""

    request_timeout_s: float = option(DEFAULT_REQUEST_TIMEOUT_S, lo=0, lo_open=True, hi=MAX_REQUEST_TIMEOUT_S,
                                      doc="seconds to wait for the receiver's answer")
    ca_bundle: str | None = option(None, doc="a PEM file (or c_rehash'ed directory) of CAs to trust, for a "
                                             "private CA")
    allow_plain_http: bool = option(False, doc="allow an http:// URL (e.g. a receiver on localhost)")


def check_ca_bundle(ca: str | None, problems: list[tuple[str, str]]) -> str | None:
    """The CA bundle, if it exists and can be read (shared with Slack)."""
    if ca is None:
        return None
    if not os.path.exists(ca):
        problems.append(("ca_bundle", f"{ca} does not exist"))
        return None
    if os.path.isfile(ca) and not os.access(ca, os.R_OK):
        problems.append(("ca_bundle", f"{ca} is not readable"))
        return None
    return ca


def _read_headers(value: Any, problems: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Configured headers; a value may be ``{env: VAR}`` or ``{file: PATH}`` (a secret). Returns the headers and
    the secret values (redacted from every message)."""
    headers: dict[str, str] = {}
    secrets: list[str] = []
    if value is None:
        return headers, secrets
    if not isinstance(value, Mapping):
        problems.append(("headers", "must be a mapping of header names to values"))
        return headers, secrets
    for name, raw in value.items():
        key = f"headers.{name}"
        if not isinstance(name, str) or not _TOKEN.match(name):
            problems.append((key, "is not a valid HTTP header name"))
            continue
        if name.lower() in _RESERVED_HEADERS:
            problems.append((key, "is set by timeguard itself and cannot be configured"))
            continue
        if isinstance(raw, Mapping):
            if set(raw) not in ({"env"}, {"file"}):
                problems.append((key, "a mapping value must be exactly {env: VAR} or {file: PATH}"))
                continue
            secret = read_secret({f"v_{next(iter(raw))}": next(iter(raw.values()))}, "v", problems,
                                 report_as=key)
            if secret is None:
                continue
            headers[name] = secret
            secrets.append(secret)
        elif isinstance(raw, str | int | float) and not isinstance(raw, bool):
            headers[name] = str(raw)
        else:
            problems.append((key, f"must be text, {{env: VAR}} or {{file: PATH}}, not {type(raw).__name__}"))
            continue
        if any(c in headers[name] for c in "\r\n\0"):
            problems.append((key, "contains a line break or NUL"))
            del headers[name]
    return headers, secrets


def redacted_url(url: str, *, keep_path: bool) -> str:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.netloc.rsplit("@", 1)[-1]
    path = parsed.path if keep_path else ("/…" if parsed.path not in ("", "/") else "")
    return f"{parsed.scheme}://{host}{path}" + ("?…" if parsed.query else "")


# ------------------------------------------------------------------------------------------------- HTTP


def retry_after_s(value: str | None, server_date: str | None,
                  trusted_now: Callable[[], float | None]) -> float | None:
    """``Retry-After`` as seconds: delta-seconds, or an HTTP-date measured from the server's own ``Date`` (not
    our clock, which may be the very thing that is wrong); without a Date, from the trusted time; else None."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = parse_http_date(text)
    except HttpDateError:
        return None
    reference: float | None = None
    if server_date:
        try:
            reference = parse_http_date(server_date)
        except HttpDateError:
            reference = None
    if reference is None:
        try:
            reference = trusted_now()
        except Exception:  # noqa: BLE001
            reference = None
    return None if reference is None else max(when - reference, 0.0)


def _root_reason(exc: BaseException) -> str:
    """The innermost OS/TLS reason of a requests exception, without its URL (a Slack URL's path is a secret)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    found = ""
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            found = current.strerror
        elif type(current).__name__ in ("SSLError", "SSLCertVerificationError") and not found:
            found = getattr(current, "reason", None) or "TLS handshake failed"
        for nxt in (current.__cause__, current.__context__, *[a for a in current.args
                                                              if isinstance(a, BaseException)]):
            if nxt is not None:
                stack.append(nxt)
        inner = getattr(current, "reason", None)
        if isinstance(inner, BaseException):
            stack.append(inner)
    return found or type(exc).__name__


def classify(status: int, reason: str, body_text: str, retry_after: float | None) -> DeliveryResult:
    """An HTTP answer → a DeliveryResult (Standard Webhooks etiquette)."""
    snippet = " ".join(body_text.split())[:200]
    error = f"HTTP {status} {reason}".rstrip() + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return DeliveryResult(True)
    if 300 <= status < 400:
        return DeliveryResult(False, error + " (redirects are not followed: configure the final URL)",
                              permanent=True)
    if status in (408, 409, 425, 429) or status >= 500:
        return DeliveryResult(False, error, retry_after_s=retry_after if status in (429, 503) else None)
    return DeliveryResult(False, error, permanent=True)  # 400, 401, 403, 404, 410, 413, 422…: a retry cannot help


def post_json(url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float, verify: str | bool,
              trusted_now: Callable[[], float | None], redact: tuple[str, ...] = ()) -> DeliveryResult:
    import requests

    try:
        response = requests.post(url, data=body, headers=dict(headers), timeout=(min(timeout_s, 10.0), timeout_s),
                                 allow_redirects=False, verify=verify, stream=True)
    except requests.exceptions.Timeout:
        return DeliveryResult(False, f"no answer within {timeout_s:g} s")
    except requests.exceptions.RequestException as exc:
        error = f"{type(exc).__name__}: {_root_reason(exc)}"
        for secret in redact:
            if secret:
                error = error.replace(secret, "[redacted]")
        return DeliveryResult(False, error)
    with response:
        text = ""
        if response.status_code >= 300:  # only the start of an error body: a receiver can't make us read a GB
            try:
                text = response.raw.read(MAX_ERROR_BODY, decode_content=True).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 — the status says enough
                text = ""
        retry_after = retry_after_s(response.headers.get("Retry-After"), response.headers.get("Date"),
                                    trusted_now)
        result = classify(response.status_code, response.reason or "", text, retry_after)
    if result.error:
        error = result.error
        for secret in redact:
            if secret:
                error = error.replace(secret, "[redacted]")
        result = DeliveryResult(result.ok, error, result.retry_after_s, result.permanent)
    return result


def sign(secret: bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (Standard Webhooks)."""
    mac = hmac.new(secret, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def send_timestamp(trusted_now: Callable[[], float | None]) -> tuple[int, str]:
    """The integer seconds to stamp a request with: the trusted time now; the host clock only without one."""
    try:
        now = trusted_now()
    except Exception:  # noqa: BLE001
        now = None
    if now is not None:
        return int(now), "trusted"
    return int(time.time()), "host"


# ------------------------------------------------------------------------------------------------- hook


class QueuedAlert:
    """What webhook and Slack hooks share: build a payload, queue it in the outbox (durable, retried), and when
    there is no outbox or it refuses the write, still try one direct send rather than stay silent."""

    name: str

    def build_payload(self, event: Event, ctx: HookContext) -> dict[str, Any]:
        raise NotImplementedError

    def deliver(self, delivery: Delivery, *, trusted_now: Callable[[], float | None]) -> DeliveryResult:
        raise NotImplementedError

    def describe(self, payload: Mapping[str, Any]) -> str:
        """What is sent, in a few words: "json alert for https://…", "Slack message: [CRITICAL] …"."""
        raise NotImplementedError

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        if event.kind is EventKind.RECOVERED and not event.test and not already_alerted(self.name, event, ctx):
            return HookResult.skipped("recovered from a condition this hook sent no message for")
        payload = self.build_payload(event, ctx)
        if ctx.dry_run:
            return HookResult.skipped(f"dry run: would send {self.describe(payload)}", payload=payload)
        if ctx.enqueue is None:
            return self._send_now(event, payload, ctx, "no outbox")
        try:
            delivery_id = ctx.enqueue(self.name, event, payload)
        except Exception as exc:  # noqa: BLE001 — the journal refused it: still try to get the word out
            return self._send_now(event, payload, ctx, f"the outbox refused it ({type(exc).__name__}: {exc})")
        return HookResult.ok(f"queued {self.describe(payload)}", delivery_id=delivery_id)

    def _send_now(self, event: Event, payload: Mapping[str, Any], ctx: HookContext, why: str) -> HookResult:
        """One direct attempt, not durable: for when there is no outbox to hold the message."""
        delivery = Delivery(id=f"{event.id}.{self.name}", hook=self.name, incident_id=event.incident_id,
                            event_id=event.id, payload=payload, attempts=0)
        result = self.deliver(delivery, trusted_now=ctx.trusted_now)
        if result.ok:
            return HookResult.ok(f"sent {self.describe(payload)} directly ({why}; not retried)",
                                 delivery_id=delivery.id)
        return HookResult.failed(f"{why}; a direct send failed too: {result.error}", delivery_id=delivery.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookOptions(SendOptions):
    url: str = option(doc="the receiver's https:// URL")
    format: str = option("json", choices=("json", "alertmanager"),
                         doc="json (the event, Standard Webhooks) or alertmanager (Alertmanager webhook v4 shape)")
    secret: str | None = option(None, secret=True, doc="the Standard Webhooks signing secret (whsec_<base64>)")
    headers: Any = option(None, doc="extra headers; a value may come from {env: VAR} or {file: PATH}",
                          schema={"type": "object", "additionalProperties": SECRET_REF_SCHEMA})


class WebhookHook(QueuedAlert):
    """One configured webhook. Also a Deliverer: the outbox calls :meth:`deliver` for its queued messages."""

    default_on: ClassVar[frozenset[EventKind]] = DEFAULT_ON
    Options: ClassVar[type[WebhookOptions]] = WebhookOptions

    def __init__(self, name: str, url: str, *, fmt: str = "json", headers: Mapping[str, str] | None = None,
                 secret: bytes | None = None, ca_bundle: str | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, redact: tuple[str, ...] = ()) -> None:
        self.name = name
        self._url = url
        self.format = fmt
        self._headers = dict(headers or {})
        self._secret = secret
        self.ca_bundle = ca_bundle
        self.request_timeout_s = request_timeout_s
        self._redact = redact
        self.shown_url = redacted_url(url, keep_path=True)

    def __repr__(self) -> str:
        return (f"WebhookHook(name={self.name!r}, url={self.shown_url!r}, format={self.format!r}, "
                f"signed={self._secret is not None})")

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> WebhookHook:
        opts, problems = convert_options(WebhookOptions, options, hook="webhook")
        ca = check_ca_bundle(opts.ca_bundle, problems) if opts is not None else None
        url = check_url(opts.url, "url", opts.allow_plain_http, problems) if opts is not None else None
        headers, header_secrets = _read_headers(options.get("headers"), problems)
        secret_text = read_secret(options, "secret", problems)
        secret = None
        if secret_text is not None:
            key = "secret_env" if "secret_env" in options else "secret_file"
            secret = decode_whsec(secret_text, key, problems)
        if problems:
            raise HookConfigError(problems)
        assert opts is not None and url is not None
        redact = tuple(s for s in (*header_secrets, secret_text) if s)
        return cls(name, url, fmt=opts.format, headers=headers, secret=secret, ca_bundle=ca,
                   request_timeout_s=opts.request_timeout_s, redact=redact)

    # ------------------------------------------------------------------------------------------ handle

    def describe(self, payload: Mapping[str, Any]) -> str:
        return f"{self.format} alert for {self.shown_url}"

    def build_payload(self, event: Event, ctx: HookContext) -> dict[str, Any]:
        if self.format == "alertmanager":
            return self._alertmanager(event, ctx)
        when, source = event_time(event, ctx)
        data = event.to_dict()
        data.update({
            "current_verdict": dict(ctx.verdict) if ctx.verdict is not None else None,
            "host_time": iso(event.wall_time_s),
            "trusted_time": iso(when) if source == "trusted" else None,
            "time_source": source,
            "severity": severity(event),
            "summary": f"{headline(event)} on {event.host}",
        })
        return {"type": f"timeguard.{event.kind.value}", "timestamp": iso(when), "data": data}

    def _alertmanager(self, event: Event, ctx: HookContext) -> dict[str, Any]:
        resolved = event.kind is EventKind.RECOVERED
        when, _source = event_time(event, ctx)
        start, _ = incident_start(event, ctx)
        sev = SEVERITY.get(previous_kind(event) or event.kind, "warning") if resolved else severity(event)
        labels = {"alertname": alert_name(event), "severity": sev, "instance": event.host, "job": "timeguard",
                  "incident_id": event.incident_id}
        if event.test:
            labels["test"] = "true"
        description = [headline(event) + f" on {event.host}."]
        if event.step_s is not None:
            description.append(f"Step {human_duration(event.step_s)}.")
        description.append(f"Host clock {iso(event.wall_time_s)}; trusted time "
                           + (iso(when) if _source == "trusted" else "unknown (no verdict)") + ".")
        verdict = event.verdict or (dict(ctx.verdict) if ctx.verdict else None)
        if verdict and verdict.get("summary"):
            description.append(f"Verdict {verdict.get('status')}: {verdict['summary']}")
        annotations = {"summary": f"{headline(event)} on {event.host}", "description": " ".join(description),
                       "event_id": event.id, "event_kind": event.kind.value}
        fingerprint = hashlib.sha256(f"timeguard\0{event.host}\0{event.incident_id}".encode()).hexdigest()[:16]
        alert = {"status": "resolved" if resolved else "firing", "labels": labels, "annotations": annotations,
                 "startsAt": iso(start), "endsAt": iso(when) if resolved else AM_ZERO_TIME,
                 "generatorURL": "", "fingerprint": fingerprint}
        return {"version": "4", "groupKey": f"timeguard:{event.host}:{event.incident_id}", "truncatedAlerts": 0,
                "status": alert["status"], "receiver": self.name,
                "groupLabels": {"alertname": labels["alertname"], "instance": event.host},
                "commonLabels": dict(labels), "commonAnnotations": dict(annotations), "externalURL": "",
                "alerts": [alert]}

    # ----------------------------------------------------------------------------------------- deliver

    def render(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The body to send: the hook's payload with what the outbox says the message carries folded in."""
        body, info = split_payload(payload)
        carried = {k: info[k] for k in ("message", "events", "updates", "event_ids", "kinds") if k in info}
        if self.format == "alertmanager":
            for alert in [*body.get("alerts", []), body]:
                notes = alert.get("annotations") or alert.get("commonAnnotations")
                if isinstance(notes, dict):
                    notes["updates"] = str(carried.get("updates", 0))
                    notes["message"] = str(carried.get("message", 1))
        elif isinstance(body.get("data"), dict):
            body["data"]["coalesced"] = carried
        return body

    def deliver(self, delivery: Delivery, *, trusted_now: Callable[[], float | None]) -> DeliveryResult:
        body = json.dumps(self.render(delivery.payload), separators=(",", ":"), ensure_ascii=False).encode()
        timestamp, source = send_timestamp(trusted_now)
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "User-Agent": f"timeguard/{__version__}",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "timeguard-time-source": source,
        }
        if self._secret is not None:
            headers["webhook-signature"] = sign(self._secret, delivery.id, timestamp, body)
        return post_json(self._url, body, headers, timeout_s=self.request_timeout_s,
                         verify=self.ca_bundle or True, trusted_now=trusted_now, redact=self._redact)
