"""The daemon's allocator settings: effective on glibc (this machine), silent where there is no such libc."""

from __future__ import annotations

import subprocess
import sys

import pytest

from timeguard.daemon import memory


def test_on_glibc_the_arena_cap_takes_and_trimming_gives_pages_back():
    # In a child: the cap must come before threads, and this test process has many.
    code = """
import ctypes, threading
from timeguard.daemon import memory
assert memory.limit_arenas() is True
def churn():
    small = [bytes(1000) for _ in range(20_000)]  # heap allocations in each thread's (capped) arena, then freed
    del small
threads = [threading.Thread(target=churn) for _ in range(6)]
[t.start() for t in threads]; [t.join() for t in threads]
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
before = rss()
memory.release()
print(before, rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, out.stdout.split())
    assert after <= before


def test_without_glibc_both_do_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(memory, "_libc", False)
    assert memory.limit_arenas() is False
    memory.release()  # no error
