"""``timeguard repair celery-beat`` and ``timeguard repair undo``: the repair without the daemon.

Exit codes: 0 repaired or nothing to do, 1 refused or failed (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_REFUSED = 1
URL_ENV = "TIMEGUARD_BEAT_DATABASE_URL"

TRUST_LOCAL_WARNING = (
    "--trust-local-clock: assuming this host's clock is right now, without asking any time source; "
    "if it is not, this writes wrong times into the beat tables"
)


def add_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    repair = sub.add_parser("repair", help="repair application state a wrong clock left behind (celery beat)",
                            description="Repair what a wrong clock left behind in an application: today the "
                            "schedule of django-celery-beat (timestamps in the future that keep beat from sending "
                            "tasks), and undo such a repair.")
    # Plain argparse parsers: a usage error here exits 2, as for any command-line tool (not Nagios 3).
    repair_sub = repair.add_subparsers(dest="repair_command", required=True, parser_class=argparse.ArgumentParser)

    beat = repair_sub.add_parser(
        "celery-beat",
        help="bring future timestamps in a django-celery-beat database back to now",
        description="Find every last_run_at, date_changed and last_update in the future and bring it back to the "
        "trusted now, so a running beat sends the tasks again. Without --trust-local-clock the time sources of the "
        "configuration are asked first, and the repair is refused unless NTP and HTTPS agree with this clock.",
    )
    config_arg(beat)
    _database_args(beat)
    beat.add_argument("--dry-run", action="store_true", help="show the rows it would change; change nothing")
    beat.add_argument("--tolerance-s", type=_number("tolerance_s"), metavar="N",
                      help="future means more than N s ahead (default 600; 93600 with --no-use-tz)")
    beat.add_argument("--no-use-tz", action="store_true", help="the project runs with Django USE_TZ=False")
    beat.add_argument("--no-tz-aware", action="store_true", help="DJANGO_CELERY_BEAT_TZ_AWARE=False")
    beat.add_argument("--time-zone", default="UTC", help="Django TIME_ZONE (only matters with --no-use-tz)")
    beat.add_argument("--beat-max-interval-s", type=_number("beat_max_interval_s"), default=5.0, metavar="S",
                      help="beat's max_interval: how long to wait between the reload signals (default 5)")
    beat.add_argument("--max-rounds", type=_number("max_rounds"), default=3, metavar="N",
                      help="rounds at most (default 3)")
    beat.add_argument("--json", action="store_true", help="print one JSON object")
    beat.add_argument("--trust-local-clock", action="store_true",
                      help="use this host's clock as the truth without asking the sources (offline hosts)")

    undo = repair_sub.add_parser("undo", help="restore the values a repair replaced (forensics)",
                                 description="Restore the old values recorded for INCIDENT, only where a row still "
                                 "holds the value the repair wrote. Restoring also restores the outage.")
    config_arg(undo)
    undo.add_argument("incident", metavar="INCIDENT")
    _database_args(undo)
    undo.add_argument("--dry-run", action="store_true", help="show what it would restore")
    undo.add_argument("--beat-max-interval-s", type=_number("beat_max_interval_s"), default=5.0, metavar="S",
                      help="beat's max_interval: how long to wait between the reload signals (default 5)")
    undo.add_argument("--json", action="store_true", help="print one JSON object")


def _number(key: str) -> Callable[[str], float]:
    """An argparse type for the repair's numeric option ``key``: the engine's own rule (no NaN, inf, negative
    or out-of-range value), so a bad value is a usage error (exit 2) naming the option."""

    def parse(text: str) -> float:
        from timeguard.repair.celery_beat import NUMERIC_OPTIONS, number_problem

        try:
            value: float = float(text)
        except ValueError:
            value = text  # type: ignore[assignment]  # number_problem says what is wanted
        if NUMERIC_OPTIONS[key][2] and isinstance(value, float) and value.is_integer():
            value = int(value)
        problem = number_problem(key, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = key  # argparse names the type in "invalid <name> value" messages
    return parse


def _database_args(parser: argparse.ArgumentParser) -> None:
    from_env = os.environ.get(URL_ENV) or None
    # A password on the command line is visible in ps: the environment variable is the better place for it.
    parser.add_argument("--database-url", required=from_env is None, default=from_env, metavar="URL",
                        help=f"SQLAlchemy URL: postgresql+psycopg://…, mysql+pymysql://…, sqlite:///… "
                        f"(default: ${URL_ENV})")
    parser.add_argument("--table-prefix", default="django_celery_beat_", metavar="P")
    parser.add_argument("--schema", help="database schema holding the tables (PostgreSQL)")


def _err(message: str) -> int:
    print(f"timeguard repair: {message}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_repair(args: argparse.Namespace) -> int:
    from timeguard.config import ConfigError
    from timeguard.repair.celery_beat import RepairError

    try:
        if args.repair_command == "undo":
            return _cmd_undo(args)
        return _cmd_celery_beat(args)
    except (RepairError, ConfigError) as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return _err("interrupted")


def _load_config(explicit: str | None) -> Any:
    from timeguard import config

    # The repair uses the sources, thresholds and state_dir, never a hook's secret: a credential that exists only
    # inside the service (a systemd credential, a variable its unit sets) must not stop a repair run from a shell.
    return config.load(config.discover(explicit), resolve_secrets=False)


def _journal(cfg: Any) -> Any:
    from timeguard.repair.celery_beat import RepairError
    from timeguard.store.journal import Journal, JournalError

    try:
        return Journal.in_state_dir(cfg.state_dir)
    except JournalError as exc:
        raise RepairError(f"the undo records go to the journal, which cannot be opened: {exc}") from None


def _cmd_celery_beat(args: argparse.Namespace) -> int:
    from timeguard.events import new_id
    from timeguard.hooks.celery_beat import evidence_problem
    from timeguard.repair.celery_beat import CeleryBeatRepair, format_table

    cfg = _load_config(args.config)
    engine = CeleryBeatRepair(
        args.database_url, table_prefix=args.table_prefix, schema=args.schema, use_tz=not args.no_use_tz,
        tz_aware=not args.no_tz_aware, time_zone=args.time_zone, tolerance_s=args.tolerance_s,
        beat_max_interval_s=args.beat_max_interval_s, max_rounds=args.max_rounds,
    )
    if args.trust_local_clock:
        print(TRUST_LOCAL_WARNING, file=sys.stderr)
        offset_s = 0.0
    else:
        from timeguard.agent import verdict_summary
        from timeguard.measure.check import run_check

        result = run_check(cfg)
        problem = evidence_problem(verdict_summary(result.verdict))
        if problem is not None:
            return _err(f"{problem}\n  sources: {result.verdict.summary}\n"
                        "  (on a host without time sources, --trust-local-clock uses this clock as the truth)")
        assert result.verdict.offset_s is not None
        offset_s = float(result.verdict.offset_s)

    def trusted_now() -> float:
        return time.time() + offset_s  # the host clock corrected by the verdict's offset

    try:
        plan = engine.plan(trusted_now())
        if args.dry_run:
            if args.json:
                print(json.dumps({"dry_run": True, "database": engine.where, **plan.to_dict()}, indent=2))
            else:
                sys.stdout.write(format_table(plan.changes))
                _print_report(plan.report, plan.unreadable)
            return EXIT_OK
        if plan.empty:
            if args.json:
                print(json.dumps({"dry_run": False, "database": engine.where, "changed": False, **plan.to_dict()}))
            else:
                sys.stdout.write(format_table(()))
                _print_report(plan.report, plan.unreadable)
            return EXIT_OK
        incident = new_id()
        if not args.json:
            sys.stdout.write(format_table(plan.changes))
            print(f"applying (incident {incident}; waits {engine.wait_s:g} s twice per round so a running beat "
                  "reloads) …", flush=True)
        journal = _journal(cfg)
        try:
            outcome = engine.apply(trusted_now, journal=journal, incident_id=incident)
        finally:
            journal.close()
    finally:
        engine.close()
    if args.json:
        print(json.dumps({"dry_run": False, "database": engine.where, "changed": outcome.changed,
                          **outcome.to_dict()}, indent=2))
    else:
        counts = outcome.rows_changed()
        print(f"{'repaired' if outcome.clean else 'NOT CLEAN'}: last_run_at {counts['last_run_at']}, date_changed "
              f"{counts['date_changed']} row(s), last_update bumped, {len(outcome.rounds)} round(s)")
        _print_report(outcome.plan.report, outcome.plan.unreadable)
        print(f"undo: timeguard repair undo {incident} --database-url URL")
    if not outcome.clean:
        return _err("future timestamps remain after the last round: restart celery beat and run the repair again")
    return EXIT_OK


def _print_report(report: Any, unreadable: Any = ()) -> None:
    if report:
        print("left as they are (the false period disabled them; re-enabling could run them twice):")
        for item in report:
            print(f"  {item.name}: {item.detail}")
    if unreadable:
        print("values it cannot read (those rows are left as they are; fix them by hand):")
        for value in unreadable:
            print(f"  {value.describe()}")


def _cmd_undo(args: argparse.Namespace) -> int:
    from timeguard.repair.celery_beat import CeleryBeatRepair

    cfg = _load_config(args.config)
    engine = CeleryBeatRepair(args.database_url, table_prefix=args.table_prefix, schema=args.schema,
                              beat_max_interval_s=args.beat_max_interval_s)
    journal = _journal(cfg)
    try:
        known = journal.repair_undo_records(args.incident)
        if not known:
            return _err(f"no repair recorded for incident {args.incident} in {journal.path}")
        if not any(engine.same_database(r["fingerprint"]) for r in known):
            where = ", ".join(sorted({r["fingerprint"] for r in known}))
            return _err(f"incident {args.incident} repaired {where}, not {engine.fingerprint}")
        # The undo's reload signal uses the host clock: undo is for forensics, not for keeping beat running.
        outcome = engine.undo(journal, args.incident, time.time, dry_run=args.dry_run)
    finally:
        journal.close()
        engine.close()
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
        return EXIT_OK
    verb = "would restore" if args.dry_run else "restored"
    from timeguard.repair.celery_beat import fmt_utc

    for r in outcome.restored:
        print(f"{verb}: {r['name']} {r['column']} {fmt_utc(r['from_s'])} → {fmt_utc(r['to_s'])}")
    for r in outcome.skipped:
        print(f"left alone: {r['name']} {r['column']}: {r['why']}")
    if not outcome.restored and not outcome.skipped:
        print(f"nothing left to undo for incident {args.incident}")
    return EXIT_OK
