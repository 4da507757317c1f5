"""Trivial tasks. No worker runs in the tests: beat only has to *send* them (that is what the bug stops)."""

from celery import shared_task


@shared_task(name="beatproject.tasks.tick")
def tick(label: str = "") -> str:
    return f"tick {label}"


@shared_task(name="beatproject.tasks.minute")
def minute() -> str:
    return "minute"


@shared_task(name="beatproject.tasks.once")
def once() -> str:
    return "once"
