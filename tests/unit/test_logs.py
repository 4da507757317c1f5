"""timeguard.logs: journald priorities when stderr is the journal, whole lines from every thread."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard import logs

PREFIX = re.compile(r"<([0-7])>")


@pytest.fixture
def stream(tmp_path) -> Iterator[io.TextIOWrapper]:
    with (tmp_path / "stderr").open("w+", encoding="utf-8") as f:
        yield f
    logs.configure()  # back to stderr for the other tests


def journal_env(f) -> dict[str, str]:
    st_ = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"}


def lines_of(f) -> list[str]:
    f.flush()
    return Path(f.name).read_text().splitlines()


def test_connected_only_when_the_variable_names_this_very_stream(stream, tmp_path):
    assert logs.connected_to_journal(stream, journal_env(stream))
    with (tmp_path / "other").open("w") as other:  # the variable inherited, stderr redirected elsewhere
        assert not logs.connected_to_journal(stream, journal_env(other))
    assert not logs.connected_to_journal(stream, {})
    assert not logs.connected_to_journal(io.StringIO(), journal_env(stream))  # no fd at all


@given(st.text(max_size=40))
def test_a_malformed_journal_stream_is_not_the_journal(value):
    with Path("/dev/null").open("w") as f:
        real = journal_env(f)["JOURNAL_STREAM"]
        assert logs.connected_to_journal(f, {"JOURNAL_STREAM": value}) == (value == real)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_line_carries_its_priority_under_journald(stream, fmt):
    logs.configure("debug", fmt, stream=stream, environ=journal_env(stream))
    log = logs.get("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("x")
    logging.getLogger("apscheduler.scheduler").warning("skipped\nsecond")
    logging.getLogger("urllib3").error("refused")
    out = lines_of(stream)
    assert all(PREFIX.match(line) for line in out), out  # a traceback's lines too: each is an entry of its own
    firsts = [(int(PREFIX.match(line)[1]), line) for line in out if re.search(r"\b(d|i|w|e|x|skipped|refused)\b",
                                                                            line)]
    expected = {"d": 7, "i": 6, "w": 4, "e": 3, "x": 3, "skipped": 4, "refused": 3}
    for word, priority in expected.items():
        assert any(p == priority and re.search(rf"\b{word}\b", line) for p, line in firsts), (word, out)
    if fmt == "json":
        entries = [json.loads(PREFIX.sub("", line, count=1)) for line in out if line[3:4] == "{"]
        assert [e["event"] for e in entries] == ["d", "i", "w", "e", "x"]


def test_no_prefix_without_the_journal(stream):
    logs.configure("info", "json", stream=stream, environ={})
    logs.get().warning("plain")
    logging.getLogger("apscheduler").warning("lib")
    out = lines_of(stream)
    assert json.loads(out[0])["event"] == "plain" and out[1] == "WARNING apscheduler: lib"


@given(st.sampled_from(["debug", "info", "warning", "error"]), st.text(max_size=30))
def test_prefixed_puts_the_priority_before_every_line(level, text):
    priority = logs.PRIORITIES[level]
    out = logs.prefixed(text, priority)
    assert all(line.startswith(f"<{priority}>") for line in out.split("\n"))
    assert PREFIX.sub("", out) == PREFIX.sub("", text)  # nothing else changed


def test_threads_never_interleave_inside_a_line(stream):
    """structlog and the stdlib both write through one lock, one whole line per write (print() wrote the line
    and its newline separately: an apscheduler warning landed in the middle of a JSON line)."""
    logs.configure("info", "json", stream=stream, environ={})

    def structlog_lines() -> None:
        for i in range(300):
            logs.get().info("s", i=i, pad="x" * 100)

    def stdlib_lines() -> None:
        for i in range(300):
            logging.getLogger("apscheduler").warning("w %d %s", i, "y" * 100)

    threads = [threading.Thread(target=t) for t in (structlog_lines, stdlib_lines) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = lines_of(stream)
    assert len(out) == 1800
    torn = [line for line in out if not (line.startswith("WARNING apscheduler: w ") and line.endswith("y" * 100))
            and json.loads(line)["event"] != "s"]
    assert not torn
