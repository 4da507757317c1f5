"""``type: slack`` — an incoming-webhook message a person reads at a glance, through the durable outbox.

Configuration::

    - type: slack
      name: ops-slack
      webhook_url_file: slack-webhook     # the URL is the secret: a file (relative: $CREDENTIALS_DIRECTORY)…
      # webhook_url_env: SLACK_WEBHOOK_URL   # …or an environment variable, or webhook_url: (inline, discouraged)
      request_timeout_s: 15

The message: a ``text`` line (the notification fallback: ``[CRITICAL] Clock rolled back −180.0 days on
host-a``) and one legacy attachment, for its colour bar by severity (``danger`` / ``warning`` / ``good``),
that holds Block Kit ``blocks``: what happened, host, step, host time vs trusted time, the verdict, what repair
hooks did (``detail["repairs"]``), and the incident with its update count. Updates of one incident coalesce in
the outbox (one message, then at most one update per ``min_interval_s``); Slack's 429 ``Retry-After`` is
honoured. Default ``on:`` as the webhook hook (see timeguard.hooks.webhook).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from timeguard import __version__, secrets
from timeguard.events import Event, EventKind
from timeguard.hooks.api import Delivery, DeliveryResult, HookConfigError, HookContext, convert_options, option
from timeguard.hooks.outbox import split_payload
from timeguard.hooks.webhook import (
    DEFAULT_ON,
    DEFAULT_REQUEST_TIMEOUT_S,
    QueuedAlert,
    SendOptions,
    check_ca_bundle,
    check_url,
    event_time,
    headline,
    human_duration,
    iso,
    post_json,
    previous_kind,
    read_secret,
    redacted_url,
    repairs,
    severity,
)

COLORS = {"critical": "danger", "warning": "warning", "info": "good"}
EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":white_check_mark:"}
MAX_FIELD = 1900  # Slack's limit on a section field is 2000 characters


def _clip(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _verdict_line(verdict: Mapping[str, Any] | None) -> str:
    if not verdict:
        return "no verdict yet (no source has answered)"
    parts = [str(verdict.get("status", "?"))]
    offset = verdict.get("offset_s")
    if isinstance(offset, int | float):
        parts.append(f"offset {human_duration(offset)} (trusted − host)")
    if verdict.get("ntp_http_agree") is False:
        parts.append("the source classes disagree")  # the summary says which (NTP, HTTPS, NTS)
    summary = verdict.get("summary")
    return " · ".join(parts) + (f"\n{summary}" if summary else "")


def _severity_for(event: Event) -> str:
    if event.kind is EventKind.RECOVERED:
        return "info"
    return severity(event)


@dataclass(frozen=True, slots=True, kw_only=True)
class SlackOptions(SendOptions):
    webhook_url: str | None = option(None, secret="inline",  # noqa: S106 - a marker, not a password
                                     doc="Slack's incoming-webhook URL (the URL is the secret)")


class SlackHook(QueuedAlert):
    default_on: ClassVar[frozenset[EventKind]] = DEFAULT_ON
    Options: ClassVar[type[SlackOptions]] = SlackOptions

    def __init__(self, name: str, webhook_url: str, *, ca_bundle: str | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self.name = name
        self._url = webhook_url
        self.ca_bundle = ca_bundle
        self.request_timeout_s = request_timeout_s
        self.shown_url = redacted_url(webhook_url, keep_path=False)  # the path is the credential

    def __repr__(self) -> str:
        return f"SlackHook(name={self.name!r}, webhook_url={self.shown_url!r})"

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> SlackHook:
        opts, problems = convert_options(SlackOptions, options, hook="slack")
        opts = opts or SlackOptions()  # nothing is required: a bad value was reported and left at its default
        ca = check_ca_bundle(opts.ca_bundle, problems)
        url_text = read_secret(options, "webhook_url", problems, inline_ok=True)
        url = None
        if url_text is None and not any(k in options for k in ("webhook_url", "webhook_url_env",
                                                                 "webhook_url_file")):
            problems.append(("webhook_url", "is required: give webhook_url_file, webhook_url_env or webhook_url "
                                            "(Slack's incoming-webhook URL)"))
        elif url_text is not None:
            key = next(k for k in ("webhook_url", "webhook_url_env", "webhook_url_file") if k in options)
            url = check_url(url_text, key, opts.allow_plain_http, problems, secret=True)
        if problems:
            raise HookConfigError(problems)
        if url is None:  # the URL could not be read here (secrets.deferring): the rest is fine
            raise secrets.Unresolved("webhook_url")
        return cls(name, url, ca_bundle=ca, request_timeout_s=opts.request_timeout_s)

    # ------------------------------------------------------------------------------------------ handle

    def describe(self, payload: Mapping[str, Any]) -> str:
        return f"Slack message: {payload['text']}"

    def build_payload(self, event: Event, ctx: HookContext) -> dict[str, Any]:
        level = _severity_for(event)
        what = headline(event)
        prefix = "[TEST] " if event.test else ""
        text = f"{prefix}[{level.upper()}] {what} on {event.host}"
        when, source = event_time(event, ctx)
        fields = [f"*Host*\n`{event.host}`", f"*Severity*\n{level}"]
        if event.step_s is not None:
            bound = "at least " if event.detail.get("lower_bound") else ""
            fields.append(f"*Step*\n{bound}{human_duration(event.step_s)}")
        host_line = iso(event.wall_time_s)
        if event.wall_before_s is not None:
            host_line = f"{iso(event.wall_before_s)} → {iso(event.wall_time_s)}"
        fields.append(f"*Host clock*\n{host_line}")
        if source == "trusted":
            off = when - event.wall_time_s
            gap = "" if abs(off) < 1 else (f"\nhost is {human_duration(off, signed=False)} "
                                            f"{'behind' if off > 0 else 'ahead'}")
            fields.append(f"*Trusted time*\n{iso(when)}{gap}")
        else:
            fields.append("*Trusted time*\nunknown (no verdict: no source has answered)")
        verdict = event.verdict or (dict(ctx.verdict) if ctx.verdict else None)
        fields.append(f"*Verdict*\n{_verdict_line(verdict)}")
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": _clip(f"{EMOJI[level]} *{prefix}{what}* on `{event.host}`")}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": _clip(f)} for f in fields[:10]]},
        ]
        done = repairs(event)
        if done:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(
                "*Repair hooks*\n" + "\n".join(f"• {line}" for line in done))}})
        context = [f"timeguard {__version__}", f"incident `{event.incident_id[:12]}`", f"event `{event.kind.value}`"]
        if event.kind is EventKind.RECOVERED and (prev := previous_kind(event)) is not None:
            context.append(f"ends `{prev.value}`")
        if event.detail.get("detected_by"):
            context.append(f"detected by {event.detail['detected_by']}")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(" · ".join(context))}]})
        return {
            "text": text,
            "attachments": [{"color": COLORS[level], "fallback": text, "blocks": blocks}],
        }

    # ----------------------------------------------------------------------------------------- deliver

    def render(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The message to post, with the incident's update count when events were coalesced into it."""
        body, info = split_payload(payload)
        message, events = int(info.get("message", 1)), int(info.get("events", 1))
        if message > 1 or events > 1:
            note = f"update {message - 1}" if message > 1 else "first message"
            if events > 1:
                kinds = ", ".join(info.get("kinds") or [])
                note += f" · {events} events since the last message" + (f" ({kinds})" if kinds else "")
            body["text"] = f"{body.get('text', '')} ({note})"
            for attachment in body.get("attachments") or []:
                attachment["fallback"] = body["text"]
                blocks = attachment.get("blocks")
                if isinstance(blocks, list):
                    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(note)}]})
        return body

    def deliver(self, delivery: Delivery, *, trusted_now: Callable[[], float | None]) -> DeliveryResult:
        body = json.dumps(self.render(delivery.payload), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": f"timeguard/{__version__}"}
        return post_json(self._url, body, headers, timeout_s=self.request_timeout_s,
                         verify=self.ca_bundle or True, trusted_now=trusted_now, redact=(self._url,))
