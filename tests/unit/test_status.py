from __future__ import annotations

import pytest

from timeguard.cli import main as cli
from timeguard.cli.status import event_line, parse_since
from timeguard.events import Event, EventKind
from timeguard.store.journal import Journal


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


# ------------------------------------------------------------------------------------------------ issue 9

import io  # noqa: E402
import json  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from timeguard.cli.status import write_json_array  # noqa: E402
from timeguard.store import journal as jmod  # noqa: E402
from timeguard.store.journal import open_for_daemon  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                     max_leaves=10)


@given(st.lists(_json, max_size=6))
def test_the_streamed_json_array_is_the_array(items):
    out = io.StringIO()
    assert write_json_array(out, iter(items)) == len(items)
    assert json.loads(out.getvalue()) == items and out.getvalue().endswith("\n")


@pytest.mark.parametrize("value", ["1e23", str(10**23), "-1", "2.5", "many", str(2**63)])
def test_a_count_that_is_not_a_whole_number_in_range_is_a_usage_error(tmp_path, capsys, value):
    """Issue 9 item 9: `events --limit 1e23` (and 10**23: OverflowError in SQLite) and `status --events`."""
    path = _write_config(tmp_path)
    for argv in (["events", "--limit", value], ["status", "--events", value]):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--config", str(path)])
        assert info.value.code == 3
        err = capsys.readouterr().err
        assert f"{argv[1]}: " in err and ("whole number" in err) and "Traceback" not in err


def _events(j, count):
    for n in range(count):
        j.record_event(Event(kind=EventKind.ROLLBACK, incident_id=f"i{n}", wall_time_s=1e9 + n, monotonic_s=1,
                             boot_id="b", detail={"pad": "x" * 300}))


def _damage_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle:middle + 4096] = bytes(range(256)) * 16
    path.write_bytes(bytes(data))


def test_status_and_events_report_a_damaged_journal_without_a_traceback(tmp_path, capsys):
    """Issue 9 item 3: a bad page in the middle of the journal. status shows what it can and names the damage;
    events says it cannot read the journal (exit 1)."""
    path = _write_config(tmp_path)
    with Journal.in_state_dir(tmp_path) as j:
        _events(j, 400)
        j.raise_floor(5e9, "b", 1.0)
    _damage_middle(tmp_path / jmod.FILENAME)
    assert cli.main(["status", "--config", str(path)]) == 3
    out = capsys.readouterr().out
    assert "Journal: " in out and "PROBLEMS: " in out and "Floor: " in out
    assert cli.main(["status", "--config", str(path), "--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["journal"]["ok"] is False and data["journal"]["problems"]
    assert data["floor"]["wall_s"] == 5e9
    assert cli.main(["events", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("timeguard events: ") and "damaged" in err and err.count("\n") == 1


def test_status_names_a_salvaged_journal(tmp_path, capsys):
    path = _write_config(tmp_path)
    with Journal.in_state_dir(tmp_path) as j:
        _events(j, 400)
    _damage_middle(tmp_path / jmod.FILENAME)
    journal, damage = open_for_daemon(tmp_path)
    journal.close()
    assert cli.main(["status", "--config", str(path)]) == 3
    out = capsys.readouterr().out
    assert "journal found damaged at " in out and f"moved aside to {damage['moved_to']}" in out
    assert cli.main(["status", "--config", str(path), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["journal"]["damage"]["moved_to"] == damage["moved_to"]


def test_events_json_streams_the_hook_schema(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jmod, "READ_BATCH", 7)
    path = _write_config(tmp_path)
    with Journal.in_state_dir(tmp_path) as j:
        _events(j, 30)
        expected = [e.to_dict() for e in j.events()]
    assert cli.main(["events", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert cli.main(["events", "--config", str(path), "--json", "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == expected[-5:]
    assert cli.main(["events", "--config", str(path), "--limit", "0"]) == 0
    assert capsys.readouterr().out == "no events\n"


@pytest.mark.parametrize("table", ["meta", "checks", "events"])
def test_status_shows_the_rest_when_one_part_is_unreadable(tmp_path, capsys, table):
    """A row whose JSON is garbage (damage SQLite cannot see) spoils that part of status only, named."""
    from timeguard.store.journal import CheckRecord

    path = _write_config(tmp_path)
    with Journal.in_state_dir(tmp_path) as j:
        _events(j, 3)
        j.raise_floor(5e9, "b", 1.0)
        j.set_meta({"version": "x"})
        j.record_check(CheckRecord(1.0, 1.0, "b", "OK", 0.0, 0.0, 0.0, 3, 3, True, "fine", []))
        column = {"meta": "value", "checks": "sources", "events": "body"}[table]
        j._write(f"UPDATE {table} SET {column} = '{{not json'")  # noqa: S608
    assert cli.main(["status", "--config", str(path)]) == 3
    out, err = capsys.readouterr()
    assert "PROBLEMS: " in out and "unreadable" in out and "Floor: " in out and "Traceback" not in err
