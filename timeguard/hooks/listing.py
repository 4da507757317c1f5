"""``timeguard hooks list``: each configured hook with its state, and every installed hook type (certbot's
``plugins`` command is the model).

It works on a configuration that does not validate — that is when it is needed: a hook whose type failed to
import, or whose options are wrong, is listed as *unusable* with the reasons ``config validate`` gives (key
path and line), next to the hooks that are fine. Exit status: 0, or 1 when a configured hook is unusable (or
the configuration cannot be read at all).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from timeguard import config
from timeguard.hooks import registry
from timeguard.hooks.api import ALL_REAL_KINDS, DEFAULT_TIMEOUT_S
from timeguard.secrets import redact_text

READY = "ready"
UNUSABLE = "unusable"
LOADED = "loaded"
FAILED = "failed"  # failed to import, or not a hook type
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # "hooks[1].command[0]"
    message: str
    line: int | None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class ConfiguredHookInfo:
    index: int
    name: str | None
    type: str | None
    on: list[str]
    on_default: bool  # ``on:`` not given: the type's default kinds
    timeout_s: Any
    dry_run: Any
    state: str  # READY or UNUSABLE
    problems: list[Problem] = field(default_factory=list)
    #: Valid, but worth a word: a secret this shell cannot read (the service may), a secret written inline.
    warnings: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HookTypeInfo:
    name: str
    distribution: str
    value: str  # "module:attribute"
    state: str  # LOADED, FAILED or DUPLICATE
    error: str | None
    default_on: list[str]
    used_by: list[str]


@dataclass(frozen=True, slots=True)
class Listing:
    config: str  # where the configuration came from
    readable: bool  # False: the file could not be read or parsed; no configured hooks are known
    config_problems: list[Problem]  # problems outside ``hooks:`` (they stop the daemon too)
    hooks: list[ConfiguredHookInfo]
    types: list[HookTypeInfo]

    @property
    def exit_code(self) -> int:
        if not self.readable or any(h.state == UNUSABLE for h in self.hooks):
            return 1
        return 1 if any(p.path == "hooks" for p in self.config_problems) else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(path: Path | str | None) -> Listing:
    """The listing for the configuration at ``path`` (None: the embedded defaults)."""
    origin = "<embedded defaults>" if path is None else str(path)
    problems: list[config.ConfigProblem] = []
    warnings: tuple[config.ConfigProblem, ...] = ()
    try:
        # this shell may not read the service's secrets
        warnings = config.load(path, resolve_secrets=False, hook_types=registry.HOOK_TYPES).warnings
    except config.ConfigError as exc:
        problems, warnings = exc.problems, exc.warnings
    raw, readable = _raw_hooks(path)
    if not readable:  # the file could not be read or parsed: load() said why
        return Listing(origin, False, [_problem(p) for p in problems], [], _types([]))
    hooks = []
    for index, item in enumerate(raw):
        prefix = f"hooks[{index}]"

        def mine(found: Sequence[config.ConfigProblem], prefix: str = prefix) -> list[Problem]:
            return [_problem(p) for p in found if p.path == prefix or p.path.startswith((prefix + ".", prefix + "["))]

        hooks.append(_hook_info(index, item, mine(problems), mine(warnings)))
    others = [_problem(p) for p in problems if not p.path.startswith("hooks[")]
    return Listing(origin, True, others, hooks, _types(hooks))


def _problem(p: config.ConfigProblem) -> Problem:
    return Problem(p.path, redact_text(p.message), p.line)


def _raw_hooks(path: Path | str | None) -> tuple[list[Any], bool]:
    """The ``hooks:`` items as written (before validation), so an invalid file can still be listed."""
    if path is None:
        return [], True
    try:
        text = Path(path).read_text(encoding="utf-8")
        data, _ = config._parse(text, str(path))  # the loader's own parser: same keys, same `on:` handling
    except (OSError, UnicodeDecodeError, config.ConfigError):
        return [], False
    hooks = data.get("hooks") if isinstance(data, dict) else None
    return (hooks if isinstance(hooks, list) else []), True


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _hook_info(index: int, item: Any, problems: list[Problem], warnings: list[Problem]) -> ConfiguredHookInfo:
    item = item if isinstance(item, dict) else {}
    name, kind = _text(item.get("name")), _text(item.get("type"))
    on = item.get("on")
    on_default = on is None
    written = [k for k in on if isinstance(k, str)] if isinstance(on, list) else []
    kinds = _default_on(kind) if on_default else written
    state = UNUSABLE if problems else READY
    return ConfiguredHookInfo(index, name, kind, kinds, on_default, item.get("timeout_s", DEFAULT_TIMEOUT_S),
                              item.get("dry_run", False), state, problems, warnings)


def _default_on(kind: str | None) -> list[str]:
    entry = registry.discover().get(kind or "")
    default = getattr(entry.hook_type, "default_on", None) if entry is not None and entry.loaded else None
    return sorted(k.value for k in default) if default is not None else []


def _types(hooks: list[ConfiguredHookInfo]) -> list[HookTypeInfo]:
    out = []
    for name, entry in registry.discover().items():
        if entry.loaded:
            state = LOADED
        elif entry.problem == "duplicate":
            state = DUPLICATE
        else:
            state = FAILED
        default = getattr(entry.hook_type, "default_on", None) if entry.loaded else None
        out.append(HookTypeInfo(
            name=name, distribution=entry.distribution, value=entry.value, state=state, error=entry.error,
            default_on=sorted(k.value for k in default) if default is not None else [],
            used_by=[h.name or f"hooks[{h.index}]" for h in hooks if h.type == name],
        ))
    return out


# ------------------------------------------------------------------------------------------------ output


def _kinds(kinds: list[str]) -> str:
    if set(kinds) == {k.value for k in ALL_REAL_KINDS}:
        return "every event"
    return ", ".join(kinds) or "nothing"


def render(listing: Listing) -> str:
    lines = [f"Configured hooks ({listing.config}):"]
    if not listing.readable:
        lines.append("  cannot read the configuration:")
        lines += [f"    {p}" for p in listing.config_problems]
    elif not listing.hooks:
        lines.append("  none (add them under hooks:)")
    width = max([len(h.name or "?") for h in listing.hooks] + [4])
    type_width = max([len(h.type or "?") for h in listing.hooks] + [4])
    for h in listing.hooks:
        state = "ready" if h.state == READY else "UNUSABLE"
        on = _kinds(h.on) if not h.on_default else f"{_kinds(h.on)} (default)" if h.on else "its type's defaults"
        timeout = f"{h.timeout_s:g} s" if isinstance(h.timeout_s, int | float) else repr(h.timeout_s)
        extra = "   dry run" if h.dry_run is True else ""
        lines.append(f"  {h.name or '?':<{width}}  {h.type or '?':<{type_width}}  {state:<8}  "
                     f"on: {on}   timeout {timeout}{extra}")
        lines += [f"      {p}" for p in h.problems]
        lines += [f"      warning: {p}" for p in h.warnings]
    if listing.readable and listing.config_problems:
        count = len(listing.config_problems)
        errors = "1 other error" if count == 1 else f"{count} other errors"
        lines.append(f"  and the configuration has {errors}: the daemon will not start with it "
                     "(timeguard config validate lists them)")
    lines.append("")
    lines.append(f"Hook types (entry-point group {registry.GROUP}):")
    if not listing.types:
        lines.append("  none installed")
    name_width = max([len(t.name) for t in listing.types] + [4])
    dist_width = max([len(t.distribution) for t in listing.types] + [4])
    for t in listing.types:
        status = f"loaded    {t.value}" if t.state == LOADED else f"{t.state.upper():<8}  {t.error}"
        lines.append(f"  {t.name:<{name_width}}  {t.distribution:<{dist_width}}  {status}")
        if t.used_by:
            lines.append(f"  {'':<{name_width}}  used by: {', '.join(t.used_by)}")
    return "\n".join(lines) + "\n"


def cmd_list(args: argparse.Namespace) -> int:
    """``timeguard hooks list [--json] [--config FILE]``."""
    listing = collect(config.discover(args.config))
    if args.json:
        print(json.dumps(listing.to_dict(), indent=2))
    else:
        sys.stdout.write(render(listing))
    return listing.exit_code
