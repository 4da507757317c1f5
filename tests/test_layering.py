"""The floor plan holds (issue 10): no upward import, no import cycle between parts, storage never imports the
plugin API, config validation never imports plugins, ``status`` and the command line's entry do not import each
other. An AST walk over timeguard/: every ``import``, in functions and under ``TYPE_CHECKING`` too (a type-only
import is still a dependency a reader has to follow).

The layers, bottom to top — a module may import its own layer and the ones below:

0. values and utilities: ``model``, ``events``, ``ranges``, ``timefmt``, ``secrets``, ``hints``, ``logs``,
   ``sdnotify``, and ``config`` beside them (it validates its own keys, nothing above it);
1. the flow's first steps: ``measure`` (sources, consensus, tracking), ``watch`` (clockwatch, detector) and ``host``
   (the processes that run here, read from /proc);
2. ``store`` (the journal: connection, transactions, migrations);
3. ``hooks`` (the plugin API, registry, dispatcher, outbox, audits);
4. ``repair`` (targets that a hook or the CLI runs) and ``discover`` (the stores found on this host);
5. the orchestrator: ``agent``, ``daemon`` (its parts), ``metrics``, ``jobs``;
6. the command line: ``cli``, ``__main__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import timeguard

ROOT = Path(timeguard.__file__).parent

LAYERS: dict[str, int] = {
    "__init__": 0, "model": 0, "events": 0, "ranges": 0, "timefmt": 0, "secrets": 0, "hints": 0, "logs": 0,
    "sdnotify": 0, "config": 0,
    "measure": 1, "watch": 1, "host": 1,
    "store": 2,
    "hooks": 3,
    "repair": 4, "discover": 4,
    "agent": 5, "daemon": 5, "metrics": 5, "jobs": 5,
    "cli": 6, "__main__": 6,
}

#: Upward imports another part of issue 10 is removing right now: (importer's part, imported part) → why.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _part(module: str) -> str:
    """``timeguard.hooks.outbox`` → ``hooks``; ``timeguard`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported timeguard module, line) for every import in timeguard/."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from timeguard import config`` imports the module timeguard.config
                targets = [f"{base}.{a.name}" for a in node.names] if base == "timeguard" else [base]
            else:
                continue
            found += [(module, t, node.lineno) for t in targets if t == "timeguard" or t.startswith("timeguard.")]
    return found


def test_known_exceptions_are_still_real():
    """An exception that no import needs any more is deleted, so the rule binds again."""
    used = {(_part(m), _part(t)) for m, t, _ in imports()}
    assert set(KNOWN_EXCEPTIONS) <= used, f"no longer needed: {sorted(set(KNOWN_EXCEPTIONS) - used)}"


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert parts <= LAYERS.keys(), f"give these a layer in LAYERS: {sorted(parts - LAYERS.keys())}"


def test_no_upward_import():
    upward = []
    for module, target, line in imports():
        src, dst = _part(module), _part(target)
        if LAYERS.get(dst, 0) > LAYERS[src] and (src, dst) not in KNOWN_EXCEPTIONS:
            upward.append(f"{module}:{line} imports {target} ({src}, layer {LAYERS[src]} → {dst}, "
                          f"layer {LAYERS[dst]})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for module, target, _line in imports():
        src, dst = _part(module), _part(target)
        if src != dst and (src, dst) not in KNOWN_EXCEPTIONS:
            graph.setdefault(src, set()).add(dst)
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(" → ".join([*path, start]))
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "\n".join(sorted(set(cycles)))


def test_storage_never_imports_hooks_repair_or_cli_and_config_never_hooks_or_repair():
    forbidden = {"store": {"hooks", "repair", "cli", "agent"}, "config": {"hooks", "repair", "cli", "agent"}}
    bad = [f"{module}:{line} imports {target}" for module, target, line in imports()
           if _part(target) in forbidden.get(_part(module), ())
           and (_part(module), _part(target)) not in KNOWN_EXCEPTIONS]
    assert not bad, "\n".join(bad)


def test_status_and_the_cli_entry_do_not_import_each_other():
    bad = [f"{module}:{line} imports {target}" for module, target, line in imports()
           if (module, target) in {("timeguard.cli.status", "timeguard.cli.main"),
                                   ("timeguard.cli.main", "timeguard.cli.status")}
           and not _is_dispatch(module, target)]
    assert not bad, "\n".join(bad)


def _is_dispatch(module: str, target: str) -> bool:
    """main dispatches ``status``/``events`` to their module (a command's entry, inside its handler): allowed;
    status never reaches back into main."""
    return module == "timeguard.cli.main" and target == "timeguard.cli.status"


def test_the_walk_sees_imports_inside_functions_and_type_checking_blocks():
    """The checks above are only as good as the walk: it must see the lazy imports the CLI is made of."""
    found = {(m, t) for m, t, _ in imports()}
    assert ("timeguard.cli.main", "timeguard.agent") in found  # inside _cmd_run
    assert ("timeguard.hooks.audit", "timeguard.hooks.dispatch") in found  # only under TYPE_CHECKING


def test_the_orchestrator_stays_an_orchestrator():
    """agent.py wires the flow together and decides nothing itself (issue 10: at most 350 lines); policy belongs in
    the pure modules below it, I/O in daemon/."""
    lines = (ROOT / "agent.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 350, f"timeguard/agent.py has {lines} lines: move what it decides or does into its own module"
