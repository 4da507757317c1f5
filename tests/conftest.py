"""The suite runs on two pytest-xdist workers (README: ``pytest -n 2``). The end-to-end tests keep to one worker,
one after another as before: each drives a real beat, daemon and database through seconds-long timing windows, and
two of them side by side would only test the machine's load. Everything else spreads over both workers. Redis
databases that harnesses flush are per worker (tests/support/redisdb.py); databases, directories and ports are
unique per test already."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")

pytest_plugins = ["tests.support.fixtures"]

E2E = "tests/e2e/"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n``: each end-to-end test is in one unit of work, any other test is a unit of its own. (xdist's
    ``--dist loadgroup`` would do it with marks, but it renames nodes through an attribute pytest 9.2 no longer
    reads — its groups are silently ignored.)"""
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return E2E if nodeid.startswith(E2E) else nodeid

    return EndToEndOnOneWorker(config, log)
