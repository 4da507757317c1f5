"""A minimal real Django project with django-celery-beat, for timeguard's end-to-end tests (tests/support/beat.py)."""

from .celery import app as celery_app

__all__ = ["celery_app"]
