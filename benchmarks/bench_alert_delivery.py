"""Alert delivery figures: how fast an alert reaches a receiver, and how the outbox copes with a slow one.

    .venv/bin/python -m benchmarks.bench_alert_delivery [--quick]

1. Latency: ``hook.handle`` (which enqueues: one SQLite transaction, synchronous=FULL) with the worker running,
   to the loopback receiver having read and verified the signed request. Target ≤ 1 s (issue 4).
2. The caller is never blocked: how long ``enqueue`` takes while the worker is busy with a slow receiver.
3. Throughput with a slow receiver (200 ms per request), N messages queued at once, for several per-hook
   in-flight limits: messages/s, and the time until the last one is delivered.

Everything runs on loopback (127.0.0.1); the journal is a temporary file on the local disk.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.receiver import Receiver
from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookContext
from timeguard.hooks.outbox import Outbox
from timeguard.hooks.webhook import WebhookHook
from timeguard.store.journal import Journal

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


class _Quiet:
    def __getattr__(self, _name: str) -> Any:
        return lambda *_a, **_k: None


def _event(incident: str) -> Event:
    now = time.time()
    return Event(kind=EventKind.ROLLBACK, incident_id=incident, wall_time_s=now, monotonic_s=time.monotonic(),
                 boot_id="bench", step_s=-3600.0, trusted_time_s=now)


def _setup(tmp: Path, receiver: Receiver, **outbox_kw: Any) -> tuple[WebhookHook, Outbox, HookContext, Journal]:
    os.environ["TG_BENCH_SECRET"] = SECRET
    hook = WebhookHook.from_config("bench", {"url": receiver.url, "allow_plain_http": True,
                                             "secret_env": "TG_BENCH_SECRET", "request_timeout_s": 10})
    journal = Journal(tmp / f"journal-{time.monotonic_ns()}.sqlite")
    box = Outbox(journal, {"bench": hook}, trusted_now=time.time, log=_Quiet(), **outbox_kw)
    ctx = HookContext(dry_run=False, trusted_now=time.time, verdict=None, journal=journal, hostname="bench",
                      enqueue=box.enqueue)
    return hook, box, ctx, journal


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def latency(tmp: Path, n: int) -> None:
    with Receiver(SECRET) as receiver:
        hook, box, ctx, journal = _setup(tmp, receiver)
        box.start()
        samples, enqueue_times = [], []
        try:
            for i in range(n):
                started = time.monotonic()
                result = hook.handle(_event(f"lat-{i}"), ctx)
                enqueue_times.append(time.monotonic() - started)
                delivery_id = result.details["delivery_id"]
                if not receiver.wait_accepted([delivery_id], 10):
                    raise SystemExit(f"delivery {delivery_id} did not arrive within 10 s")
                got = next(r for r in receiver.received if r.id == delivery_id and r.accepted)
                assert got.verified, got.reason
                samples.append(got.mono - started)
                time.sleep(0.02)
        finally:
            box.stop()
            journal.close()
    print(f"latency handle→receiver (n={n}, signed, verified): p50 {statistics.median(samples) * 1000:.1f} ms, "
          f"p95 {_pct(samples, 0.95) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms "
          f"(target ≤ 1000 ms: {'met' if max(samples) <= 1.0 else 'MISSED'})")
    print(f"  of which handle()+enqueue (one committed transaction): p50 {statistics.median(enqueue_times) * 1000:.2f} "
          f"ms, max {max(enqueue_times) * 1000:.2f} ms")


def throughput(tmp: Path, n: int, delay_s: float, limits: list[int]) -> None:
    for limit in limits:
        with Receiver(SECRET, delay_s=delay_s) as receiver:
            hook, box, ctx, journal = _setup(tmp, receiver, per_hook_in_flight=limit)
            box.start()
            try:
                started = time.monotonic()
                enqueue_times, ids = [], []
                for i in range(n):
                    t0 = time.monotonic()
                    ids.append(hook.handle(_event(f"tp-{limit}-{i}"), ctx).details["delivery_id"])
                    enqueue_times.append(time.monotonic() - t0)
                queued = time.monotonic() - started
                if not receiver.wait_accepted(ids, n * delay_s + 30):
                    raise SystemExit(f"in-flight {limit}: not all {n} delivered")
                elapsed = max(r.mono for r in receiver.accepted()) - started
            finally:
                box.stop()
                journal.close()
            duplicates = len(receiver.received) - len(set(ids))
            print(f"slow receiver ({delay_s * 1000:.0f} ms/request), {n} queued at once, {limit} in flight: "
                  f"{n / elapsed:.1f} msg/s, all delivered in {elapsed:.2f} s (ideal {n * delay_s / limit:.2f} s); "
                  f"queueing all {n} took {queued * 1000:.0f} ms, enqueue p99 {_pct(enqueue_times, 0.99) * 1000:.2f} "
                  f"ms; duplicates {duplicates}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="timeguard-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        tmp = Path(d)
        latency(tmp, 20 if args.quick else 100)
        throughput(tmp, 20 if args.quick else 100, 0.2, [1, 4, 16])


if __name__ == "__main__":
    main()
