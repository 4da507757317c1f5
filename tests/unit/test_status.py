from __future__ import annotations

import pytest

from timeguard import cli
from timeguard.events import Event, EventKind
from timeguard.journal import Journal
from timeguard.status import event_line, parse_since


def test_parse_since():
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert parse_since("7d", 1e6) == 1e6 - 7 * 86400
    assert parse_since("2026-11-23T00:00:00Z", 0) == parse_since("2026-11-23T00:00:00", 0)
    assert parse_since("2026-11-23T01:00:00+01:00", 0) == parse_since("2026-11-23T00:00:00Z", 0)
    with pytest.raises(ValueError, match="not an age like 90s/15m/2h/7d nor an ISO 8601 time"):
        parse_since("yesterday", 0)


def test_event_line_reads_at_a_glance():
    event = Event(kind=EventKind.ROLLBACK_WHILE_DOWN, incident_id="abcdef0123", wall_time_s=1_795_459_000.0,
                  monotonic_s=1.0, boot_id="b", step_s=-15552000.0, trusted_time_s=1_795_459_000.5,
                  detail={"lower_bound": True, "same_boot": False})
    line = event_line(event)
    assert "rollback_while_down" in line and "step -15552000 s (-180.0 d) (at least)" in line
    assert "incident abcdef01" in line and "same_boot=False" in line


def _write_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"state_dir: {tmp_path}\n")
    return path


def test_events_cli_filters_and_rejects_bad_input(tmp_path, capsys):
    path = _write_config(tmp_path)
    assert cli.main(["events", "--config", str(path)]) == 0
    assert "no journal" in capsys.readouterr().out
    with Journal.in_state_dir(tmp_path) as j:
        for kind in (EventKind.FORWARD_JUMP, EventKind.ROLLBACK):
            j.record_event(Event(kind=kind, incident_id="i", wall_time_s=1e9, monotonic_s=1, boot_id="b"))
    assert cli.main(["events", "--config", str(path), "--kind", "rollback", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"kind": "rollback"' in out and "forward_jump" not in out
    assert cli.main(["events", "--config", str(path), "--kind", "rolback"]) == 2
    assert "known kinds: rollback" in capsys.readouterr().err
    assert cli.main(["events", "--config", str(path), "--since", "soon"]) == 2
    assert "not an age" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "journal.sqlite"]  # the CLI wrote nothing


def test_status_without_journal(tmp_path, capsys):
    path = _write_config(tmp_path)
    assert cli.main(["status", "--config", str(path)]) == 3
    assert "not running (no journal at" in capsys.readouterr().out


def test_status_and_events_with_a_broken_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("timeout_s: never\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["status", "--config", str(path)])
    assert info.value.code == 1
    assert "timeout_s: must be a number of seconds" in capsys.readouterr().err
