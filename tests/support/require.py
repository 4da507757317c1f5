"""Skip a test for a missing real component — except under TIMEGUARD_REQUIRE_REAL=1 (CI), where it fails.

A green CI that skipped the real tests is not green (TESTING.md).
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_REAL = os.environ.get("TIMEGUARD_REQUIRE_REAL", "") not in ("", "0")


def need(condition: object, what: str) -> None:
    """Skip (or, in CI, fail) the calling test unless ``condition`` holds; ``what`` names what is missing."""
    if condition:
        return
    if REQUIRE_REAL:
        pytest.fail(f"TIMEGUARD_REQUIRE_REAL=1 but {what}", pytrace=False)
    pytest.skip(what)


def need_program(name: str, package: str) -> str:
    """The path of program ``name``; skip/fail naming the Debian package that provides it."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := os.path.join(d, name), os.X_OK)), None
    )
    need(path, f"{name} is not installed (apt-get install {package})")
    assert path is not None
    return path
