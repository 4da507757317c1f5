"""``timeguard repair TARGET`` and ``timeguard repair undo INCIDENT``: a repair without the daemon, for every
repair target registered in ``timeguard.repair_targets`` (``celery-beat`` is the built-in one).

Exit codes: 0 repaired or nothing to do, 1 refused or failed (the message says why), 2 a usage error (argparse's,
or no store named: no database, no ``--hook``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2  # the command line names nothing to repair

TRUST_LOCAL_WARNING = (
    "--trust-local-clock: assuming this host's clock is right now, without asking any time source; "
    "if it is not, this writes wrong times into the {what}"
)


def add_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    repair = sub.add_parser("repair", help="repair application state a wrong clock left behind (celery beat and "
                            "other installed targets)",
                            description="Repair what a wrong clock left behind in an application — timestamps in "
                            "the future that keep a scheduler from running its jobs — and undo such a repair.")
    # The targets are found through their entry points, which costs ~70 ms (importlib.metadata, the targets'
    # modules): the subcommands are added when the repair parser is first used, not for every `timeguard check`.
    repair.__class__ = _lazy(type(repair))
    repair.__dict__["_populate"] = lambda: _add_targets(repair, config_arg)


_LAZY: dict[type, type] = {}


def _lazy(base: type) -> type:
    """``base`` whose instance runs its ``_populate`` the first time anything reads its actions (parsing, help,
    the docs generator)."""
    if base not in _LAZY:

        class Lazy(base):  # type: ignore[misc, valid-type]
            @property
            def _actions(self) -> list[argparse.Action]:
                populate = self.__dict__.pop("_populate", None)
                if populate is not None:
                    populate()
                return self.__dict__["_actions"]  # type: ignore[no-any-return]

            @_actions.setter
            def _actions(self, value: list[argparse.Action]) -> None:
                self.__dict__["_actions"] = value

        Lazy.__name__ = f"Lazy{base.__name__}"
        _LAZY[base] = Lazy
    return _LAZY[base]


def _add_targets(repair: argparse.ArgumentParser, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    from timeguard.repair.target import kinds

    loaded = {name: entry.kind for name, entry in kinds().items() if entry.kind is not None}
    names = ", ".join(kind.cli_name for kind in loaded.values()) or "none installed"
    repair.description = (f"{repair.description} Targets: {names}; a third-party target is one module and one "
                          "entry point in the group timeguard.repair_targets.")
    # Plain argparse parsers: a usage error here exits 2, as for any command-line tool (not Nagios 3).
    repair_sub = repair.add_subparsers(dest="repair_command", required=True, parser_class=argparse.ArgumentParser)
    for name, kind in loaded.items():
        parser = repair_sub.add_parser(kind.cli_name, help=kind.help, description=kind.description)
        parser.set_defaults(repair_target=name)
        config_arg(parser)
        _hook_arg(parser, kind.name)
        kind.add_arguments(parser)
        parser.add_argument("--dry-run", action="store_true", help="show what it would change; change nothing (without "
                            "a usable verdict: with this host's clock, and it says what the real run lacks)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--trust-local-clock", action="store_true",
                            help="use this host's clock as the truth without asking the sources (offline hosts)")

    undo = repair_sub.add_parser("undo", help="restore the values a repair replaced (forensics)",
                                 description="Restore the old values recorded for INCIDENT, only where an item still "
                                 "holds the value the repair wrote. Restoring also restores the outage. The "
                                 "options of the target the incident repaired say where its store is.")
    config_arg(undo)
    undo.add_argument("incident", metavar="INCIDENT")
    _hook_arg(undo, "repair")
    for kind in loaded.values():
        kind.add_undo_arguments(undo)
    undo.add_argument("--dry-run", action="store_true", help="show what it would restore")
    undo.add_argument("--json", action="store_true", help="print one JSON object")


def _hook_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--hook", metavar="NAME", help=f"use the {what} hook NAME of the configuration: its "
                        "database (or Django settings), options, max_offset_s and owner's stop/start commands; "
                        "options given here override its own")


def _err(message: str) -> int:
    print(f"timeguard repair: {message}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_repair(args: argparse.Namespace) -> int:
    from timeguard.config import ConfigError
    from timeguard.repair.target import RepairError
    from timeguard.store.journal import JournalError

    try:
        if args.repair_command == "undo":
            return _cmd_undo(args)
        return _cmd_target(args)
    except RepairError as exc:
        _err(str(exc))
        # a store the command line does not name is a usage error, as argparse's own are
        return EXIT_USAGE if getattr(exc, "usage", False) else EXIT_REFUSED
    except (ConfigError, JournalError) as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return _err("interrupted")


def _load_config(explicit: str | None) -> Any:
    from timeguard import config

    # The repair uses the sources, thresholds and state_dir, never a hook's secret: a credential that exists only
    # inside the service (a systemd credential, a variable its unit sets) must not stop a repair run from a shell.
    from timeguard.hooks.registry import HOOK_TYPES

    return config.load(config.discover(explicit), resolve_secrets=False, hook_types=HOOK_TYPES)


def _journal(cfg: Any) -> Any:
    from timeguard.repair.target import RepairError
    from timeguard.store.journal import Journal, JournalError

    try:
        return Journal.in_state_dir(cfg.state_dir)
    except JournalError as exc:
        raise RepairError(f"the undo records go to the journal, which cannot be opened: {exc}") from None


def _trusted_offset(cfg: Any, args: argparse.Namespace, what: str, max_offset_s: float | None = None) -> float | str:
    """The verdict's offset (sources − host), or why there is no repair."""
    if args.trust_local_clock:
        print(TRUST_LOCAL_WARNING.format(what=what), file=sys.stderr)
        return 0.0
    from timeguard.measure.check import run_check
    from timeguard.model import verdict_summary
    from timeguard.repair.evidence import DEFAULT_MAX_OFFSET_S, evidence_problem

    result = run_check(cfg)
    problem = evidence_problem(verdict_summary(result.verdict),
                               DEFAULT_MAX_OFFSET_S if max_offset_s is None else max_offset_s)
    if problem is not None:
        return (f"{problem}\n  sources: {result.verdict.summary}\n"
                "  (on a host without time sources, --trust-local-clock uses this clock as the truth)")
    assert result.verdict.offset_s is not None
    return float(result.verdict.offset_s)


def _repair_hooks(cfg: Any, target: str) -> list[Any]:
    """The hooks of the configuration that repair ``target`` (``type: celery_beat``, ``type: repair`` with
    ``target: celery_beat``…)."""
    from timeguard.hooks.registry import UnknownHookType, find_type
    from timeguard.repair.hook import RepairHook

    found = []
    for spec in cfg.hooks:
        try:
            hook_type = find_type(spec.type)
        except UnknownHookType:
            continue
        if isinstance(hook_type, type) and issubclass(hook_type, RepairHook) and \
                (hook_type.target_name or spec.options.get("target")) == target:
            found.append(spec)
    return found


def _configured_hook(cfg: Any, args: argparse.Namespace, kind: Any) -> Any:
    """The ``--hook NAME`` of the configuration, built with the command line's options on top of its own."""
    from timeguard.hooks.api import HookConfigError
    from timeguard.hooks.registry import find_type
    from timeguard.repair.target import RepairError

    specs = _repair_hooks(cfg, kind.name)
    spec = next((s for s in specs if s.name == args.hook), None)
    if spec is None:
        others = next((s for s in cfg.hooks if s.name == args.hook), None)
        known = ", ".join(s.name for s in specs) or "none"
        why = (f"is a {others.type} hook, not a {kind.name} repair" if others is not None
               else f"is not in {cfg.origin}")
        raise RepairError(f"--hook {args.hook} {why} ({kind.name} hooks there: {known})")
    cli_options = getattr(kind, "cli_options", None)
    options = cli_options(args, spec.options) if cli_options is not None else dict(spec.options)
    try:
        hook = find_type(spec.type).from_config(spec.name, options)
    except HookConfigError as exc:
        raise RepairError(f"hook {spec.name} ({cfg.origin}): {exc}") from None
    hook.timeout_s = spec.timeout_s  # the owner's stop and start each get this long, as in the daemon
    return hook


def _hook_hint(cfg: Any, args: argparse.Namespace, target: str) -> str:
    """Where the configuration has hooks for ``target`` and the command line named no store: how to use them."""
    named = any(getattr(args, key, None) for key in ("database_url", "django_settings", "django_python"))
    names = [spec.name for spec in _repair_hooks(cfg, target)]
    if not names or named:
        return ""
    if len(names) == 1:
        return f"\n  the configuration ({cfg.origin}) has one {target} hook: --hook {names[0]} uses it"
    return f"\n  the configuration ({cfg.origin}) has {target} hooks {', '.join(names)}: choose one with --hook NAME"


def _open_target(cfg: Any, args: argparse.Namespace, kind: Any) -> tuple[Any, Any]:
    """The target to repair and the configured hook it comes from (None without ``--hook``)."""
    from timeguard.repair.target import RepairError

    if args.hook:
        hook = _configured_hook(cfg, args, kind)
        return hook.target(), hook
    try:
        return kind.from_args(args), None
    except RepairError as exc:
        exc.args = (f"{exc}{_hook_hint(cfg, args, kind.name)}",)  # the same error (a usage one stays one)
        raise


def _cmd_target(args: argparse.Namespace) -> int:
    from timeguard.events import new_id
    from timeguard.repair.target import find_kind, run_owner_command
    from timeguard.repair.undo import UndoLog

    kind = find_kind(args.repair_target)
    cfg = _load_config(args.config)
    target, hook = _open_target(cfg, args, kind)
    where_key = getattr(target, "where_key", "store")
    try:
        offset = _trusted_offset(cfg, args, getattr(target, "what", "store"),
                                 hook.max_offset_s if hook is not None else None)
        no_verdict: str | None = None
        if isinstance(offset, str):
            if not args.dry_run:
                return _err(offset)
            # A dry run writes nothing: it shows the plan with this host's clock, and what the real run lacks.
            no_verdict, offset = offset, 0.0
            print(f"timeguard repair: dry run with this host's clock: the real run needs a usable verdict, and now "
                  f"{no_verdict}", file=sys.stderr)
        offset_s = offset

        def trusted_now() -> float:
            return time.time() + offset_s  # the host clock corrected by the verdict's offset

        plan = target.plan(trusted_now())
        if args.dry_run:
            verdict = {"clock": "local", "verdict_problem": no_verdict.split("\n")[0]} if no_verdict else {}
            head = {"dry_run": True, where_key: target.where, **verdict, **plan.to_dict()}
            if plan.total > len(plan.changes) and hasattr(target, "iter_changes"):
                _write_every_change(target, head, plan.now_s, as_json=args.json)
            elif args.json:
                print(json.dumps(head, indent=2))
            else:
                sys.stdout.write(target.format_plan(plan.changes))
            if not args.json:
                _print_report(target, plan.report, plan.unreadable)
            return EXIT_OK
        if plan.empty:
            if args.json:
                print(json.dumps({"dry_run": False, where_key: target.where, "changed": False, **plan.to_dict()}))
            else:
                sys.stdout.write(target.format_plan(()))
                _print_report(target, plan.report, plan.unreadable)
            return EXIT_OK
        incident = new_id()
        if not args.json:
            sys.stdout.write(target.format_plan(plan.changes))
            if plan.total > len(plan.changes):
                print(f"… and {plan.total - len(plan.changes)} more (--dry-run lists every one; the undo records "
                      "keep them after the repair)")
            print(target.applying_note(incident), flush=True)
        journal = _journal(cfg)
        stopped = False
        try:
            if hook is not None and hook.stop_command:  # as the hook does: stop → repair → start
                run_owner_command(hook.stop_command, "stop_command", timeout_s=hook.timeout_s)
                stopped = True
            outcome = target.apply(trusted_now, undo_log=UndoLog(journal), incident_id=incident,
                                   owner_stopped=stopped)
        finally:
            journal.close()
            if stopped and hook.start_command:
                run_owner_command(hook.start_command, "start_command", timeout_s=hook.timeout_s)
    finally:
        target.close()
    if args.json:
        print(json.dumps({"dry_run": False, where_key: target.where, "changed": outcome.changed,
                          **outcome.to_dict()}, indent=2))
    else:
        print(target.outcome_line(outcome))
        _print_report(target, outcome.plan.report, outcome.plan.unreadable)
        print(target.undo_hint(incident))
    if not outcome.clean:
        return _err(target.not_clean_message)
    return EXIT_OK


def _write_every_change(target: Any, head: dict[str, Any], now_s: float, *, as_json: bool) -> None:
    """A dry run's listing of a plan that lists only its first changes (a large store): every change, streamed
    from the target (``iter_changes``) as it is read — a table a thousand rows at a time, or the JSON object with
    its ``changes`` written item by item — so the listing never holds the whole store."""
    changes = target.iter_changes(now_s)
    if as_json:
        head = {**head, "changes": []}
        text = json.dumps(head, indent=2)
        opening = text.index('"changes": []') + len('"changes": [')
        sys.stdout.write(text[:opening])
        for number, change in enumerate(changes):
            sys.stdout.write(("," if number else "") + "\n    " + json.dumps(change.to_dict()))
        sys.stdout.write("\n  " + text[opening:] + "\n")
        return
    first = True
    while batch := list(itertools.islice(changes, 1000)):
        table = target.format_plan(batch)
        sys.stdout.write(table if first else table.split("\n", 1)[1])  # one heading
        first = False


def _print_report(target: Any, report: Any, unreadable: Any = ()) -> None:
    if report:
        print(target.report_heading)
        for item in report:
            print(f"  {item.name}: {item.detail}")
    if unreadable:
        print(target.unreadable_heading)
        for value in unreadable:
            print(f"  {value.describe()}")


def _undo_target(cfg: Any, args: argparse.Namespace, kind: Any, fingerprints: list[str]) -> Any:
    from timeguard.repair.target import RepairError

    if args.hook:
        return _configured_hook(cfg, args, kind).target()
    try:
        return kind.undo_target(args, fingerprints)
    except RepairError as exc:
        exc.args = (f"{exc}{_hook_hint(cfg, args, kind.name)}",)
        raise


def _cmd_undo(args: argparse.Namespace) -> int:
    from timeguard.repair.target import find_kind, fmt_utc
    from timeguard.repair.undo import UndoLog

    cfg = _load_config(args.config)
    journal = _journal(cfg)
    outcomes = []
    try:
        undo_log = UndoLog(journal)
        stores = undo_log.targets(args.incident)
        if not stores:
            return _err(f"no repair recorded for incident {args.incident} in {journal.path}")
        for name in dict.fromkeys(name for name, _ in stores):
            fingerprints = [fp for n, fp in stores if n == name]
            target = _undo_target(cfg, args, find_kind(name), fingerprints)
            try:
                if not any(target.same_store(fp) for fp in fingerprints):
                    where = ", ".join(sorted(set(fingerprints)))
                    return _err(f"incident {args.incident} repaired {where}, not {target.fingerprint}")
                # The undo's reload signal uses the host clock: undo is for forensics, not for keeping it running.
                outcomes.append(target.undo(undo_log, args.incident, time.time, dry_run=args.dry_run))
            finally:
                target.close()
    finally:
        journal.close()
    if args.json:
        shown = [o.to_dict() for o in outcomes]
        print(json.dumps(shown[0] if len(shown) == 1 else shown, indent=2))
        return EXIT_OK
    verb = "would restore" if args.dry_run else "restored"
    for outcome in outcomes:
        for r in outcome.restored:
            print(f"{verb}: {r['name']} {r.get('column', r.get('field'))} {fmt_utc(r['from_s'])} → "
                  f"{fmt_utc(r['to_s'])}")
        for r in outcome.skipped:
            print(f"left alone: {r['name']} {r.get('column', r.get('field'))}: {r['why']}")
    if not any(o.restored or o.skipped for o in outcomes):
        print(f"nothing left to undo for incident {args.incident}")
    return EXIT_OK
