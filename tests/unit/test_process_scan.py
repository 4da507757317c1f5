"""host.process.scan over the real process table: zombies, forks that share their parent's command line, and
processes that end while they are looked at."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from timeguard.host import process


def _marked(marker: str) -> Callable[[Any, list[str]], str | None]:
    return lambda _proc, cmdline: marker if marker in cmdline else None


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that exited and is not reaped: psutil.process_iter reports its command line as None."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + 5
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    yield pid
    os.waitpid(pid, 0)


def test_a_zombie_in_the_process_table_is_passed_over(zombie: int) -> None:
    # CI once failed here: list(None) on a zombie's command line ("'NoneType' object is not iterable")
    assert next(p for p in psutil.process_iter(["cmdline"]) if p.pid == zombie).info["cmdline"] is None
    seen: list[int] = []
    assert process.scan(lambda proc, _cmdline: seen.append(proc.pid)) == []
    assert zombie not in seen
    assert process.scan(lambda _proc, _cmdline: True, [zombie]) == []


def test_a_fork_with_its_parent_s_command_line_is_the_parent_s() -> None:
    marker = f"scan-{uuid.uuid4().hex}"
    code = ("import os, time\n"
            "if os.fork() == 0:\n    time.sleep(30)\n    os._exit(0)\n"
            "print('forked', flush=True)\ntime.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "forked"
        children = psutil.Process(parent.pid).children()
        assert len(children) == 1
        found = process.scan(_marked(marker))
        assert [(proc.pid, what) for proc, _cmdline, what in found] == [(parent.pid, marker)]
        # asked for the child alone, it is found: its parent is not among the processes looked at
        alone = process.scan(_marked(marker), [children[0].pid])
        assert [proc.pid for proc, _cmdline, _what in alone] == [children[0].pid]
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


def test_a_process_that_ended_is_left_out() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert process.scan(lambda _proc, _cmdline: True, [gone.pid, 2**22 + 1]) == []
