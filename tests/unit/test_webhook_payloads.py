"""Webhook and Slack hooks: configuration, the payloads (json, Alertmanager v4, Slack), signing, HTTP outcomes."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.support.receiver import Receiver, verify
from timeguard.events import Event, EventKind
from timeguard.hooks.api import Delivery, HookConfigError, HookContext, HookStatus
from timeguard.hooks.outbox import OUTBOX_KEY, JournalHistory, OutboxStore
from timeguard.hooks.slack import SlackHook
from timeguard.hooks.webhook import (
    AM_ZERO_TIME,
    DEFAULT_ON,
    WebhookHook,
    classify,
    human_duration,
    retry_after_s,
    sign,
)
from timeguard.store.journal import Journal

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
HOST_T = 1_700_000_000.0  # what the host clock said
TRUE_T = HOST_T + 180 * 86400  # what the sources say (the host is 180 days behind)


def ev(kind: EventKind = EventKind.ROLLBACK, incident: str = "inc-1", **kw: Any) -> Event:
    kw.setdefault("step_s", -180 * 86400.0)
    kw.setdefault("wall_before_s", HOST_T + 180 * 86400)
    kw.setdefault("trusted_time_s", TRUE_T)
    return Event(kind=kind, incident_id=incident, wall_time_s=HOST_T, monotonic_s=100.0, boot_id="b",
                 host="host-a", **kw)


def ctx(*, dry_run: bool = False, trusted: float | None = TRUE_T, journal: Any = None, enqueue: Any = None,
        verdict: dict[str, Any] | None = None) -> HookContext:
    return HookContext(dry_run=dry_run, trusted_now=lambda: trusted, verdict=verdict,
                       history=JournalHistory(journal) if journal is not None else None, hostname="host-a",
                       enqueue=enqueue)


def problems(cls: Any, options: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(HookConfigError) as info:
        cls.from_config("h", options)
    return dict(info.value.problems)


# ------------------------------------------------------------------------------------------------- config


def test_webhook_config_problems_are_all_reported_by_key(monkeypatch):
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    found = problems(WebhookHook, {"url": "http://alerts.example/x", "format": "xml", "secret_env": "NOPE_SECRET",
                                   "request_timeout_s": 0, "headers": {"webhook-id": "x", "bad name": "y"},
                                   "urll": 1})
    assert "plain http" in found["url"] and "allow_plain_http" in found["url"]
    assert "must be one of json, alertmanager" in found["format"]
    assert "NOPE_SECRET is not set" in found["secret_env"]
    assert "request_timeout_s" in found
    assert "set by timeguard itself" in found["headers.webhook-id"]
    assert "not a valid HTTP header name" in found["headers.bad name"]
    assert "did you mean 'url'" in found["urll"]


def test_inline_secrets_are_refused_and_never_echoed():
    found = problems(WebhookHook, {"url": "https://a.example/", "secret": SECRET})
    assert "inline secrets are refused" in found["secret"] and SECRET not in json.dumps(found)


@pytest.mark.parametrize(("secret", "why"), [
    ("hunter2hunter2hunter2hunter2", "Standard Webhooks secret"),
    ("whsec_not*base64!", "not valid base64"),
    ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
    ("whsec_" + base64.b64encode(b"x" * 65).decode(), "decodes to 65 bytes"),
])
def test_a_bad_whsec_secret_is_explained_without_showing_it(monkeypatch, secret, why):
    monkeypatch.setenv("TG_TEST_SECRET", secret)
    found = problems(WebhookHook, {"url": "https://a.example/", "secret_env": "TG_TEST_SECRET"})
    assert why in found["secret_env"] and secret not in found["secret_env"]


def test_secret_file_relative_to_systemd_credentials(monkeypatch, tmp_path):
    (tmp_path / "webhook-secret").write_text(SECRET + "\n")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    found = problems(WebhookHook, {"url": "https://a.example/", "secret_file": "webhook-secret"})
    assert "$CREDENTIALS_DIRECTORY" in found["secret_file"] and "LoadCredential" in found["secret_file"]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    for path in ("webhook-secret", "$CREDENTIALS_DIRECTORY/webhook-secret", str(tmp_path / "webhook-secret")):
        hook = WebhookHook.from_config("h", {"url": "https://a.example/", "secret_file": path})
        assert "signed=True" in repr(hook) and SECRET not in repr(hook)
    found = problems(WebhookHook, {"url": "https://a.example/", "secret_file": "missing"})
    assert "cannot read" in found["secret_file"]


def test_header_values_from_env_are_secrets(monkeypatch):
    monkeypatch.setenv("TG_TOKEN", "Bearer s3cr3t")
    hook = WebhookHook.from_config("h", {"url": "https://a.example/", "headers": {"Authorization": {"env": "TG_TOKEN"},
                                                                                   "X-Team": "infra"}})
    assert hook._headers == {"Authorization": "Bearer s3cr3t", "X-Team": "infra"}
    assert "s3cr3t" not in repr(hook)


def test_urls_with_credentials_or_no_host_are_refused():
    assert "credentials in the URL" in problems(WebhookHook, {"url": "https://u:p@a.example/"})["url"]
    assert "with a host" in problems(WebhookHook, {"url": "ftp://a.example/"})["url"]
    assert "is required" in problems(WebhookHook, {})["url"]


def test_slack_url_is_a_secret(monkeypatch, tmp_path):
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    monkeypatch.setenv("TG_SLACK", url)
    hook = SlackHook.from_config("s", {"webhook_url_env": "TG_SLACK"})
    assert "XXXXSECRET" not in repr(hook) and hook.shown_url == "https://hooks.slack.com/…"
    found = problems(SlackHook, {"webhook_url_env": "TG_SLACK", "webhook_url": url})
    assert "only one of" in next(iter(found.values()))
    monkeypatch.setenv("TG_SLACK", "http://hooks.slack.example/services/XXXXSECRET")
    found = problems(SlackHook, {"webhook_url_env": "TG_SLACK"})
    assert "plain http" in found["webhook_url_env"] and "XXXXSECRET" not in found["webhook_url_env"]
    assert "is required" in problems(SlackHook, {})["webhook_url"]


def test_default_on_is_what_an_operator_is_paged_for():
    assert WebhookHook.default_on == SlackHook.default_on == DEFAULT_ON
    assert EventKind.ROLLBACK in DEFAULT_ON and EventKind.RECOVERED in DEFAULT_ON
    assert EventKind.OFFSET_WARNING not in DEFAULT_ON and EventKind.LEAP not in DEFAULT_ON
    assert EventKind.TEST not in DEFAULT_ON


# ----------------------------------------------------------------------------------------------- payloads


def hook(**options: Any) -> WebhookHook:
    return WebhookHook.from_config("ops", {"url": "https://a.example/hook", **options})


def test_json_payload_standard_webhooks_shape():
    verdict = {"status": "CRITICAL", "offset_s": 180 * 86400.0, "summary": "3 sources agree"}
    payload = hook().build_payload(ev(verdict=verdict), ctx(verdict=verdict))
    assert payload["type"] == "timeguard.rollback"
    assert payload["timestamp"].startswith("2024-05-12")  # trusted, not the host's 2023-11-14
    data = payload["data"]
    assert data["id"] and data["incident_id"] == "inc-1" and data["schema"] == 1 and data["kind"] == "rollback"
    assert data["host_time"].startswith("2023-11-14") and data["trusted_time"] == payload["timestamp"]
    assert data["time_source"] == "trusted" and data["severity"] == "critical"
    assert data["current_verdict"] == verdict and data["verdict"] == verdict
    assert data["summary"] == "Clock rolled back −180.0 days on host-a"
    json.dumps(payload)


def test_without_any_verdict_the_payload_says_host_time():
    payload = hook().build_payload(ev(trusted_time_s=None), ctx(trusted=None))
    assert payload["data"]["time_source"] == "host" and payload["data"]["trusted_time"] is None
    assert payload["timestamp"].startswith("2023-11-14")


def test_alertmanager_shape_and_a_fingerprint_stable_per_incident(tmp_path):
    with Journal(tmp_path / "j.sqlite") as journal:
        first = ev()
        journal.record_event(first)
        later = ev(EventKind.FORWARD_JUMP, step_s=5.0, trusted_time_s=TRUE_T + 30)
        journal.record_event(later)
        am = hook(format="alertmanager")
        p1 = am.build_payload(first, ctx(journal=journal))
        p2 = am.build_payload(later, ctx(journal=journal))
    assert p1["version"] == "4" and p1["status"] == "firing" and p1["receiver"] == "ops"
    [alert] = p1["alerts"]
    assert alert["labels"]["alertname"] == "ClockRollback" and alert["labels"]["severity"] == "critical"
    assert alert["labels"]["instance"] == "host-a" and alert["endsAt"] == AM_ZERO_TIME
    assert alert["startsAt"].startswith("2024-05-12") and "−180.0 days" in alert["annotations"]["description"]
    assert p2["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert p2["alerts"][0]["startsAt"] == alert["startsAt"]  # the incident's start, not this update's


def test_alertmanager_recovered_resolves_the_alert_that_fired():
    recovered = ev(EventKind.RECOVERED, step_s=None, detail={"previous": "offset_critical"})
    payload = hook(format="alertmanager").build_payload(recovered, ctx())
    [alert] = payload["alerts"]
    assert payload["status"] == alert["status"] == "resolved"
    assert alert["labels"]["alertname"] == "ClockOffsetCritical" and alert["endsAt"] != AM_ZERO_TIME
    fired = hook(format="alertmanager").build_payload(ev(EventKind.OFFSET_CRITICAL), ctx())
    assert fired["alerts"][0]["fingerprint"] == alert["fingerprint"]


def test_render_folds_in_what_the_message_carries():
    info = {"message": 2, "events": 4, "updates": 3, "event_ids": ["a", "b", "c", "d"], "kinds": ["rollback"]}
    body = hook().render({**hook().build_payload(ev(), ctx()), OUTBOX_KEY: info})
    assert OUTBOX_KEY not in body and body["data"]["coalesced"]["events"] == 4
    am = hook(format="alertmanager")
    body = am.render({**am.build_payload(ev(), ctx()), OUTBOX_KEY: info})
    assert body["alerts"][0]["annotations"]["updates"] == "3" and body["commonAnnotations"]["message"] == "2"


# ------------------------------------------------------------------------------------------------- handle


def test_handle_enqueues_and_returns_the_delivery_id():
    calls = []

    def enqueue(name: str, event: Event, payload: Any) -> str:
        calls.append((name, event.id, payload["type"]))
        return f"{event.id}.{name}"

    event = ev()
    result = hook().handle(event, ctx(enqueue=enqueue))
    assert result.status is HookStatus.OK and result.details["delivery_id"] == f"{event.id}.ops"
    assert result.summary.startswith("queued json alert") and calls == [("ops", event.id, "timeguard.rollback")]


def test_dry_run_says_what_it_would_send_and_queues_nothing():
    result = hook().handle(ev(), ctx(dry_run=True, enqueue=lambda *a: pytest.fail("queued in a dry run")))
    assert result.status is HookStatus.SKIPPED and result.details["payload"]["type"] == "timeguard.rollback"


def test_recovered_is_sent_only_after_an_alert_for_that_incident(tmp_path):
    recovered = ev(EventKind.RECOVERED, step_s=None, detail={"previous": "offset_warning"})
    with Journal(tmp_path / "j.sqlite") as journal:
        result = hook().handle(recovered, ctx(journal=journal, enqueue=lambda *a: "x"))
        assert result.status is HookStatus.SKIPPED and "sent no message" in result.summary
        OutboxStore(journal).enqueue("ops", ev(EventKind.OFFSET_CRITICAL), {}, epoch="e", now_mono=1, now_wall=1,
                               min_interval_s=60)
        assert hook().handle(recovered, ctx(journal=journal, enqueue=lambda *a: "x")).status is HookStatus.OK


def test_without_an_outbox_it_sends_directly_once(monkeypatch):
    monkeypatch.setenv("TG_SECRET", SECRET)
    with Receiver(SECRET) as receiver:
        h = WebhookHook.from_config("ops", {"url": receiver.url, "allow_plain_http": True, "secret_env": "TG_SECRET"})
        result = h.handle(ev(), ctx(trusted=None))  # falls back to the host clock (the real one here): verifies
        assert result.status is HookStatus.OK and "not retried" in result.summary
        [got] = receiver.received
        assert got.verified is True and got.id == result.details["delivery_id"]
        assert got.headers["timeguard-time-source"] == "host"


# ------------------------------------------------------------------------------------------------ signing


def test_signature_is_standard_webhooks_and_uses_trusted_time(monkeypatch):
    monkeypatch.setenv("TG_SECRET", SECRET)
    with Receiver(SECRET) as receiver:
        h = WebhookHook.from_config("ops", {"url": receiver.url, "allow_plain_http": True,
                                            "secret_env": "TG_SECRET"})
        delivery = Delivery(id="evt1.ops", hook="ops", incident_id="inc-1", event_id="evt1",
                            payload=h.build_payload(ev(), ctx()), attempts=0)
        assert h.deliver(delivery, trusted_now=lambda: 1_800_000_000.0).ok is False  # stamped far off: refused
        [refused] = receiver.received
        assert refused.verified is False and "too new" in refused.reason and refused.status == 401
        assert refused.headers["webhook-timestamp"] == "1800000000"  # trusted_now, not the host clock
        assert refused.headers["timeguard-time-source"] == "trusted"
        assert refused.headers["webhook-signature"] == sign(base64.b64decode(SECRET[6:]), "evt1.ops", 1_800_000_000,
                                                            refused.body)
        assert h.deliver(delivery, trusted_now=time.time).ok
        got = receiver.received[-1]
        assert got.verified is True and got.id == "evt1.ops" and json.loads(got.body)["type"] == "timeguard.rollback"
        ok, why = verify(SECRET, got.headers, got.body, now=time.time() + 3 * 86400)
        assert not ok and "too old" in why  # the receiver's check is real: 3 days off is refused


# ------------------------------------------------------------------------------------------- HTTP outcomes


@pytest.mark.parametrize(("status", "ok", "permanent", "retry_after"), [
    (200, True, False, None), (204, True, False, None),
    (301, False, True, None), (308, False, True, None),
    (400, False, True, None), (401, False, True, None), (403, False, True, None), (404, False, True, None),
    (410, False, True, None), (422, False, True, None),
    (408, False, False, None), (429, False, False, 5.0), (500, False, False, None), (502, False, False, None),
    (503, False, False, 5.0), (504, False, False, None),
])
def test_http_status_classification(status, ok, permanent, retry_after):
    result = classify(status, "X", "body", 5.0)
    assert (result.ok, result.permanent, result.retry_after_s) == (ok, permanent, retry_after)


def test_retry_after_seconds_and_http_dates_relative_to_the_server_date():
    never = lambda: pytest.fail("the host clock must not be consulted")  # noqa: E731
    assert retry_after_s("120", None, never) == 120
    assert retry_after_s(" 7 ", "garbage", never) == 7
    # An HTTP-date 90 s after the server's own Date: 90 s, whatever our clock says.
    assert retry_after_s("Wed, 21 Oct 2015 07:29:30 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", never) == 90
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:29:30 GMT", never) == 0
    # No server Date: from the trusted time; with neither, unknown.
    assert retry_after_s("Wed, 21 Oct 2015 07:29:30 GMT", None, lambda: 1445412540.0) == 30
    assert retry_after_s("Wed, 21 Oct 2015 07:29:30 GMT", None, lambda: None) is None
    assert retry_after_s("soon", None, never) is None and retry_after_s(None, None, never) is None


def test_connection_errors_are_retried_and_do_not_leak_the_url():
    url = "http://127.0.0.1:9/services/T0/B0/SECRETPATH"  # discard port: refused
    s = SlackHook("s", url, request_timeout_s=2)
    result = s.deliver(Delivery("i.s", "s", "inc", "i", {"text": "x"}, 0), trusted_now=lambda: None)
    assert not result.ok and not result.permanent and "SECRETPATH" not in result.error
    assert "refused" in result.error.lower() or "connect" in result.error.lower()


# ----------------------------------------------------------------------------------------------------- Slack


@pytest.mark.parametrize(("seconds", "text"), [
    (-180 * 86400, "−180.0 days"), (3 * 86400, "+3.0 days"), (-5400, "−90.0 min"), (7200, "+2.0 hours"),
    (-12.5, "−12.5 s"), (0.25, "+250 ms"),
])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def slack() -> SlackHook:
    return SlackHook("ops-slack", "https://hooks.slack.com/services/T/B/X")


def test_slack_message_reads_at_a_glance():
    verdict = {"status": "CRITICAL", "offset_s": 180 * 86400.0, "summary": "3 of 3 sources agree",
               "ntp_http_agree": True}
    event = ev(verdict=verdict, detail={"detected_by": "timerfd",
                                        "repairs": [{"hook": "celery-beat", "status": "changed",
                                                     "summary": "reset last_run_at of 12 tasks"}]})
    payload = slack().build_payload(event, ctx())
    assert payload["text"] == "[CRITICAL] Clock rolled back −180.0 days on host-a"
    [attachment] = payload["attachments"]
    assert attachment["color"] == "danger" and attachment["fallback"] == payload["text"]
    text = json.dumps(attachment["blocks"], ensure_ascii=False)
    assert "*Step*\\n−180.0 days" in text and "`host-a`" in text
    assert "2023-11-14" in text and "2024-05-12" in text and "host is 180.0 days behind" in text
    assert "CRITICAL" in text and "3 of 3 sources agree" in text
    assert "celery-beat: changed — reset last_run_at of 12 tasks" in text and "detected by timerfd" in text
    assert {b["type"] for b in attachment["blocks"]} == {"section", "context"}


@pytest.mark.parametrize(("kind", "color"), [
    (EventKind.ROLLBACK, "danger"), (EventKind.FORWARD_JUMP, "warning"), (EventKind.SOURCES_UNAVAILABLE, "warning"),
    (EventKind.RECOVERED, "good"), (EventKind.SOURCES_INCONSISTENT, "danger"),
])
def test_slack_colour_by_severity(kind, color):
    assert slack().build_payload(ev(kind), ctx())["attachments"][0]["color"] == color


def test_slack_without_a_verdict_says_so():
    payload = slack().build_payload(ev(trusted_time_s=None), ctx(trusted=None))
    text = json.dumps(payload["attachments"][0]["blocks"])
    assert "unknown (no verdict" in text and "no verdict yet" in text


def test_slack_update_count_in_text_and_blocks():
    info = {"message": 3, "events": 5, "updates": 4, "kinds": ["rollback", "forward_jump"]}
    body = slack().render({**slack().build_payload(ev(), ctx()), OUTBOX_KEY: info})
    assert body["text"].endswith("(update 2 · 5 events since the last message (rollback, forward_jump))")
    assert body["attachments"][0]["blocks"][-1]["type"] == "context" and OUTBOX_KEY not in body
