"""The ``timeguard`` command line. Heavy imports live inside the commands, so ``--help`` stays instant."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from timeguard import __version__
from timeguard.cli.common import EXIT_CONFIG_INVALID, load_config, load_config_or_exit

#: Nagios UNKNOWN: what `check` exits with when it cannot even start (bad config, bad arguments).
EXIT_UNKNOWN = 3
#: EX_CONFIG from sysexits.h: the unit's RestartPreventExitStatus keeps systemd from restarting in a loop.
EXIT_CONFIG = 78


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $TIMEGUARD_CONFIG, else /etc/timeguard/timeguard.yaml if it exists, "
        "else the embedded defaults)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _event_count(text: str) -> int:
    """A number of events: a whole number from 0 to SQLite's largest integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {2**63 - 1}, not {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; a Nagios plugin must exit 3 (UNKNOWN) instead."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNKNOWN, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="timeguard",
        description="Host time-integrity agent: cross-checks the clock against NTP and HTTPS Date sources. "
        "It never sets the clock.",
    )
    parser.add_argument("--version", action="version", version=f"timeguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser(
        "check",
        help="cross-check the clock once (Nagios exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
        description="Query every configured NTP and HTTPS source (or the NTP servers given with -H) concurrently, "
        "reject falsetickers, and report the host clock's offset with an error bound. The status holds for every "
        "offset the sources leave possible, not only the estimate. Exit codes as check_ntp_time: 0 OK, 1 WARNING, "
        "2 CRITICAL or SOURCES_INCONSISTENT, and 2 when no offset can be found (NO_MAJORITY, UNKNOWN), 3 with -q; "
        "3 for a bad configuration or bad arguments.",
    )
    _config_arg(check)
    output = check.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument("--nagios", action="store_true", help="print one Nagios/Icinga line with perfdata")
    check.add_argument("-H", "--hostname", action="append", metavar="HOST[:PORT]",
                       help="check this NTP server instead of the configured sources (repeatable; IPv6 as "
                       "[ADDRESS]:PORT), as check_ntp_time -H does")
    check.add_argument("-p", "--port", type=_port, default=123, metavar="PORT",
                       help="port for -H servers given without one (default 123)")
    check.add_argument("-w", "--warning", type=_threshold, metavar="RANGE",
                       help="Nagios range over |offset| in seconds for WARNING, e.g. 0.5, ~:0.5, @0:0.5, -1:1, 10: "
                       "(default: thresholds.warning_s)")
    check.add_argument("-c", "--critical", type=_threshold, metavar="RANGE",
                       help="Nagios range over |offset| in seconds for CRITICAL (default: thresholds.critical_s)")
    check.add_argument("-q", "--quiet", action="store_true",
                       help="UNKNOWN (3) instead of CRITICAL (2) when no offset can be found, as check_ntp_time -q")
    check.add_argument("-t", "--timeout", type=_positive_float, metavar="SECONDS",
                       help="deadline for the whole check (overrides timeout_s)")
    # `-w -1:1` as Icinga passes it: a value that starts like a negative number is a value, not an option.
    import re

    check._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(:.*)?$")

    run = sub.add_parser("run", help="run the daemon (systemd Type=notify service)",
                         description="Detect clock steps, cross-check the sources on a schedule and keep the journal "
                         "in state_dir. SIGHUP reloads the configuration, SIGTERM stops.")
    _config_arg(run)

    status = sub.add_parser(
        "status", help="is the daemon alive; last verdict, floor, last events, journal health",
        description="Read the daemon's journal (read-only, while it runs) and show whether the daemon is alive (its "
        "heartbeat), the last verdict, the clock floor, the most recent events, the alert outbox and the journal's "
        "health. Exit 0 when the daemon is running, 3 when it is not.",
    )
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--events", type=_event_count, default=5, metavar="N", help="how many recent events to show")

    events = sub.add_parser(
        "events", help="list the journal's events (steps, conditions)",
        description="List the events recorded in the journal (clock steps, rollbacks found at start-up, offset and "
        "source conditions and their recovery, future state found) in the order they were recorded: wall times may "
        "have jumped. Exit 2 for a bad --kind or --since.",
    )
    _config_arg(events)
    events.add_argument("--since", metavar="WHEN",
                        help="only events since WHEN: an ISO 8601 time (UTC if no zone) or an age such as 90s, "
                        "15m, 2h, 7d; compared with the trusted time where it was known")
    events.add_argument("--kind", action="append", metavar="KIND",
                        help="only this kind (repeatable): " + ", ".join(k.value for k in _event_kinds()))
    events.add_argument("--limit", type=_event_count, metavar="N", help="only the newest N")
    events.add_argument("--json", action="store_true", help="one JSON array of events (the hook event schema)")

    hooks = sub.add_parser("hooks", help="list the configured hooks and the installed hook types",
                           description="Look at and try out the hooks: the alerts (webhook, Slack), commands and "
                           "repairs that run on events.")
    hooks_sub = hooks.add_subparsers(dest="hooks_command", required=True, parser_class=_Parser)
    hooks_list = hooks_sub.add_parser(
        "list", help="each configured hook with its state, and every installed hook type (exit 1: one is unusable)",
        description="Show each hook of the configuration (type, event kinds, timeout, dry run; ready, or unusable "
        "and why) and every hook type registered in the entry-point group timeguard.hooks (its package; loaded, "
        "failed to import and why, or a duplicate). Works on a configuration that does not validate. Exit 1 when a "
        "configured hook is unusable.",
    )
    _config_arg(hooks_list)
    hooks_list.add_argument("--json", action="store_true", help="print one JSON object")
    hooks_test = hooks_sub.add_parser(
        "test", help="fire a synthetic event (marked as a test) at one configured hook, and show what it did",
        description="Build the hook NAME from the configuration and run it once, now, for a synthetic event marked "
        "test: true. Alerts are sent directly (no outbox, no retry) and stamped with this host's clock. Exit 0 if the "
        "hook did its job (ok, changed, or skipped), 1 if it failed.",
    )
    hooks_test.add_argument("name", help="the hook's name (see `timeguard hooks list`)")
    hooks_test.add_argument("--event", default="rollback", metavar="KIND",
                            help="the event kind to simulate (default rollback): " + ", ".join(
                                k.value for k in _event_kinds()))
    hooks_test.add_argument("--dry-run", action="store_true", help="ask the hook what it would do, without doing it")
    hooks_test.add_argument("--json", action="store_true", help="print the run as one JSON object")
    _config_arg(hooks_test)

    cfg = sub.add_parser("config", help="validate, show or generate the configuration",
                         description="Validate, show or generate timeguard's YAML configuration.")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    validate = cfg_sub.add_parser(
        "validate", help="check a configuration file and list every error with its line",
        description="Load FILE over the embedded defaults and list every error at once, each with its file:line "
        "and key. Exit 0 if it is valid, 1 if not.",
    )
    validate.add_argument("file", nargs="?", help="the file (default: the one timeguard would load)")
    _config_arg(validate)
    show = cfg_sub.add_parser("show", help="print the effective configuration (file merged over defaults)",
                              description="Print the configuration timeguard would run with: the file merged "
                              "over the embedded defaults, as YAML (or JSON).")
    _config_arg(show)
    show.add_argument("--json", action="store_true", help="as JSON instead of YAML")
    cfg_sub.add_parser("generate", help="print the documented default configuration (config/timeguard.yaml)",
                       description="Print the default configuration with every key documented; save it as "
                       "/etc/timeguard/timeguard.yaml and edit it.")
    cfg_sub.add_parser("schema", help="print the configuration's JSON Schema (for editors)",
                       description="Print a JSON Schema (draft 2020-12) of the whole configuration, every hook "
                       "type's options included (the installed plugins' too), for editors such as "
                       "yaml-language-server: save it and add '# yaml-language-server: $schema=PATH' to the top "
                       "of the file. config validate checks what a schema cannot (files, programs, keys that "
                       "depend on each other).")

    from timeguard.cli.repair import add_parser as add_repair_parser

    add_repair_parser(sub, _config_arg)
    from timeguard.cli.discover import add_parser as add_discover_parser

    add_discover_parser(sub, _config_arg)
    return parser


#: What a shell reports for a command killed by SIGPIPE (128 + 13): `timeguard events | head` ends like `yes | head`.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A reader that goes away (``timeguard config show | head``) ends it quietly with exit 141,
    the way the Python docs recommend (signal module, "Note on SIGPIPE"): no traceback, no "Exception ignored"
    at exit."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's own flush at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket's EPIPE (a receiver, a database) is an error to show, not a reader that left
        # Python flushes stdout again at exit: point it at /dev/null so that flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _stdout_closed() -> bool:
    """True when nobody reads stdout any more: poll(2) reports POLLERR on a pipe whose read end is closed."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # no usable stdout at all
        return True


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return _cmd_check(args)
    if args.command == "config":
        return _cmd_config(args)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "status":
        from timeguard.cli.status import cmd_status

        return cmd_status(args)
    if args.command == "events":
        from timeguard.cli.status import cmd_events

        return cmd_events(args)
    if args.command == "hooks" and args.hooks_command == "list":
        from timeguard.hooks.listing import cmd_list

        return cmd_list(args)
    if args.command == "hooks" and args.hooks_command == "test":
        return _cmd_hooks_test(args)
    if args.command == "repair":
        from timeguard.cli.repair import cmd_repair

        return cmd_repair(args)
    if args.command == "discover":
        from timeguard.cli.discover import cmd_discover

        return cmd_discover(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse only admits the commands above


def _cmd_hooks_test(args: argparse.Namespace) -> int:
    import socket
    import time

    from timeguard.events import Event, EventKind
    from timeguard.hooks.api import HookStatus
    from timeguard.hooks.dispatch import Dispatcher
    from timeguard.watch.clockwatch import read_boot_id

    cfg = load_config_or_exit(args.config)
    try:
        kind = EventKind(args.event)
    except ValueError:
        print(f"timeguard hooks test: unknown event kind {args.event!r}; known: "
              + ", ".join(k.value for k in EventKind), file=sys.stderr)
        return 2
    now = time.time()
    step = {EventKind.ROLLBACK: -3600.0, EventKind.ROLLBACK_WHILE_DOWN: -3600.0, EventKind.FORWARD_JUMP: 3600.0,
            EventKind.LEAP: -1.0}.get(kind)
    event = Event(kind=kind, incident_id=f"test-{int(now)}", wall_time_s=now, monotonic_s=time.monotonic(),
                  boot_id=read_boot_id(), step_s=step, wall_before_s=None if step is None else now - step,
                  detail={"synthetic": True, "note": "sent by `timeguard hooks test`"}, test=True)
    dispatcher = Dispatcher(cfg.hooks, trusted_now=lambda: None, verdict=lambda: None,
                            hostname=socket.gethostname())
    try:
        run = dispatcher.run_now(args.name, event, dry_run=True if args.dry_run else None)
    except KeyError as exc:
        print(f"timeguard hooks test: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"hook": run.hook, "type": run.hook_type, "event": event.to_dict(),
                          "status": run.status.value, "summary": run.summary, "details": dict(run.details),
                          "output": run.output, "duration_s": run.duration_s, "dry_run": run.dry_run}, indent=2,
                         default=str))
    else:
        dry = " (dry run)" if run.dry_run else ""
        print(f"hook {run.hook} ({run.hook_type}), test event {kind.value}{dry}: {run.status.value.upper()}: "
              f"{run.summary} [{run.duration_s:.3f} s]")
        if run.output:
            print(run.output.rstrip())
    return 1 if run.status is HookStatus.FAILED else 0


def _event_kinds() -> list[Any]:
    from timeguard.events import EventKind

    return list(EventKind)


def _cmd_run(args: argparse.Namespace) -> int:
    from timeguard import config, logs
    from timeguard.agent import Agent
    from timeguard.daemon import memory
    from timeguard.hooks.registry import HOOK_TYPES

    memory.limit_arenas()  # before the daemon starts a thread (timeguard/daemon/memory.py)

    path = config.discover(args.config)
    try:
        cfg = config.load(path, hook_types=HOOK_TYPES)
    except config.ConfigError as exc:
        print(logs.for_stderr(f"timeguard run: invalid configuration, not starting:\n{exc}"), file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(cfg.logging.level, cfg.logging.format)
    for warning in cfg.warnings:
        logs.get().warning("config_warning", warning=warning.format(cfg.origin))
    from timeguard.store.journal import JournalError, JournalUnusable

    try:
        return Agent(cfg, config_path=path).run()
    except JournalUnusable as exc:  # the state directory or the journal's files: restarting cannot fix it
        print(logs.for_stderr(f"timeguard run: cannot use the journal, not starting: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except JournalError as exc:  # still locked by another process, an I/O error: never a new, empty journal
        print(logs.for_stderr(f"timeguard run: cannot use the journal, not starting: {exc}"), file=sys.stderr)
        return 1


def _threshold(text: str) -> Any:
    """A Nagios range over |offset| (check_ntp_time's -w/-c)."""
    from timeguard.ranges import Range, RangeError

    try:
        return Range.parse(text)
    except RangeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number from 1 to 65535: {text!r}")
    return int(text)


def _cmd_check(args: argparse.Namespace) -> int:
    import dataclasses

    from timeguard.cli import report
    from timeguard.config import ConfigError, Sources
    from timeguard.measure.check import parse_host, run_check
    from timeguard.ranges import Range

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"TIMEGUARD UNKNOWN - invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    warning = args.warning or Range.upper(cfg.thresholds.warning_s)
    critical = args.critical or Range.upper(cfg.thresholds.critical_s)
    plain_w, plain_c = warning.simple_s, critical.simple_s  # two plain numbers N: alert above N
    if plain_w is not None and plain_c is not None and plain_c <= plain_w:
        print(f"TIMEGUARD UNKNOWN - critical ({critical.text} s) must be greater than warning ({warning.text} s)",
              file=sys.stderr)
        return EXIT_UNKNOWN
    if args.hostname:
        try:
            servers = [parse_host(text, args.port) for text in args.hostname]
        except ValueError as exc:
            print(f"TIMEGUARD UNKNOWN - -H {exc}", file=sys.stderr)
            return EXIT_UNKNOWN
        seen = [(s.host.lower(), s.port) for s in servers]
        if len(set(seen)) != len(seen):
            print("TIMEGUARD UNKNOWN - -H names the same server twice: it would count twice in the majority",
                  file=sys.stderr)
            return EXIT_UNKNOWN
        cfg = dataclasses.replace(cfg, sources=Sources(ntp=tuple(servers), http=()))
    if args.timeout is not None:
        cfg = dataclasses.replace(cfg, timeout_s=args.timeout)
    result = run_check(cfg, warning_s=warning, critical_s=critical, quiet=args.quiet)
    if args.json:
        sys.stdout.write(report.as_json(result))
    elif args.nagios:
        sys.stdout.write(report.nagios(result))
    else:
        sys.stdout.write(report.human(result))
    return result.exit_code


def _cmd_config(args: argparse.Namespace) -> int:
    from timeguard import config
    from timeguard.hooks.registry import HOOK_TYPES

    if args.config_command == "generate":
        sys.stdout.write(config.default_text())
        return 0
    if args.config_command == "schema":
        print(json.dumps(config.json_schema(HOOK_TYPES.schemas()), indent=2))
        return 0
    explicit = getattr(args, "file", None) or args.config
    path = config.discover(explicit)
    try:
        # a secret only the service can read is a warning
        cfg = config.load(path, resolve_secrets=False, hook_types=HOOK_TYPES)
    except config.ConfigError as exc:
        count = len(exc.problems)
        print(f"{exc.origin}: invalid, {count} error{'s' if count != 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.format(exc.origin)}", file=sys.stderr)
        return EXIT_CONFIG_INVALID
    for warning in cfg.warnings:
        print(f"warning: {warning.format(cfg.origin)}", file=sys.stderr)
    if args.config_command == "validate":
        kinds = [f"{len(cfg.sources.ntp)} NTP", f"{len(cfg.sources.http)} HTTPS"]
        kinds += [f"{len(cfg.sources.nts)} NTS"] if cfg.sources.nts else []
        print(f"{cfg.origin}: valid ({', '.join(kinds[:-1])} and {kinds[-1]} sources)"
              + (f", {len(cfg.warnings)} warning{'s' if len(cfg.warnings) != 1 else ''}" if cfg.warnings else ""))
        return 0
    from timeguard.secrets import redact

    data = redact(config.to_dict(cfg))  # passwords, tokens, Slack URLs: never printed
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        import yaml

        merged = "" if cfg.origin == "<embedded defaults>" else " merged over the embedded defaults"
        print(f"# effective configuration: {cfg.origin}{merged}")
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0
