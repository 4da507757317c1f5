"""Hook types, found through the entry-point group ``timeguard.hooks`` — the built-ins too (certbot's model).

Sorted by name so every run sees the same order; a name two distributions both register is refused,
naming both; a plugin that fails to import is reported with its error and does not stop the others.

A hook type may stand for a family of types: its ``family()`` classmethod returns more types by name, which the
registry lists beside the entry points (an entry point of the same name wins). The repair hook does this for every
repair target, so ``type: <target>`` works as soon as the target's package registers it in
``timeguard.repair_targets`` — the registry itself knows nothing of repair.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import threading
import traceback
from dataclasses import dataclass
from typing import Any

GROUP = "timeguard.hooks"


@dataclass(frozen=True, slots=True)
class TypeEntry:
    name: str
    value: str  # "module:attribute"
    distribution: str  # the package that registered it, e.g. "timeguard 0.1.0"
    hook_type: Any | None  # the loaded class, or None when it failed
    error: str | None  # why it is unusable: import error, duplicate, not a hook type
    problem: str | None = None  # "import", "duplicate" or "not_a_hook_type" when unusable

    @property
    def loaded(self) -> bool:
        return self.hook_type is not None


class UnknownHookType(LookupError):
    pass


_cache: dict[str, dict[str, TypeEntry]] = {}  # "" -> the discovered types, once
_lock = threading.Lock()


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def discover(*, refresh: bool = False) -> dict[str, TypeEntry]:
    """Every registered hook type by name (loaded or with the reason it is not)."""
    with _lock:
        if "" in _cache and not refresh:
            return _cache[""]
        by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
        for ep in importlib.metadata.entry_points(group=GROUP):
            by_name.setdefault(ep.name, []).append(ep)
        found: dict[str, TypeEntry] = {}
        for name in sorted(by_name):
            eps = by_name[name]
            dists = sorted({_distribution(ep) for ep in eps})
            if len(eps) > 1 and len({ep.value for ep in eps}) > 1:
                found[name] = TypeEntry(name, eps[0].value, " and ".join(dists), None,
                                        f"duplicate hook type {name!r} from {' and '.join(dists)}: "
                                        "uninstall one of them", "duplicate")
                continue
            found[name] = _load(eps[0])
        for name, entry in _families(found).items():
            found.setdefault(name, entry)
        _cache[""] = dict(sorted(found.items()))
        return _cache[""]


def _families(entries: dict[str, TypeEntry]) -> dict[str, TypeEntry]:
    """The members of every loaded type's ``family()``: ``{name: (hook type, None) or (None, why unusable)}``."""
    members: dict[str, TypeEntry] = {}
    for head in entries.values():
        family = getattr(head.hook_type, "family", None)
        if not callable(family):
            continue
        try:
            listed = family()
        except Exception as exc:  # noqa: BLE001 — a family that cannot list itself costs its members only
            members[f"{head.name}:*"] = TypeEntry(f"{head.name}:*", head.value, head.distribution, None,
                                                  f"{head.value}.family() failed: {type(exc).__name__}: {exc}",
                                                  "import")
            continue
        for name, (hook_type, error) in listed.items():
            if name in entries or name in members:
                continue
            members[name] = TypeEntry(name, f"{head.value}[{name}]", head.distribution, hook_type, error,
                                      None if hook_type is not None else "import")
    return members


def _load(ep: importlib.metadata.EntryPoint) -> TypeEntry:
    dist = _distribution(ep)
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 — a broken plugin is reported, never fatal to the others
        last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" ({last.filename}:{last.lineno})" if last else ""
        return TypeEntry(ep.name, ep.value, dist, None,
                         f"failed to import {ep.value}: {type(exc).__name__}: {exc}{where}; "
                         f"update or uninstall {dist}", "import")
    if not callable(getattr(obj, "from_config", None)):
        return TypeEntry(ep.name, ep.value, dist, None,
                         f"{ep.value} is not a timeguard hook type (it has no from_config classmethod)",
                         "not_a_hook_type")
    return TypeEntry(ep.name, ep.value, dist, obj, None)


def find_type(name: str) -> Any:
    """The hook type registered as ``name``; UnknownHookType says what is installed, or why it failed."""
    entries = discover()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(n for n, e in entries.items() if e.loaded) or "none"
        raise UnknownHookType(f"unknown hook type {name!r} (installed: {known})")
    if entry.hook_type is None:
        raise UnknownHookType(f"hook type {name!r} is unusable: {entry.error}")
    return entry.hook_type


def options_schema_of(hook_type: Any) -> dict[str, Any] | None:
    """The JSON Schema ``properties``/``required`` of a type's own options: its ``options_schema()`` (a type
    whose options depend on a target), else its ``Options`` dataclass; None when it declares none (a plugin
    written before ``Options``; its options are left open)."""
    from timeguard.config import options_schema

    own = getattr(hook_type, "options_schema", None)
    if callable(own):
        return own()
    options = getattr(hook_type, "Options", None)
    if dataclasses.is_dataclass(options):
        return options_schema(options)
    return None


def options_of(hook_type: Any) -> frozenset[str] | None:
    """The option names a hook type declares — from its ``Options`` (:func:`options_schema_of`), else a plugin's
    older ``OPTIONS`` or its module's ``OPTIONS``/``_OPTIONS`` — or None when it declares none (a plugin need
    not). Used to say which way out a type offers (``url_file``…)."""
    import sys

    schema = options_schema_of(hook_type)
    if schema is not None:
        return frozenset(schema["properties"])
    found = getattr(hook_type, "OPTIONS", None)
    if found is None:
        module = sys.modules.get(getattr(hook_type, "__module__", ""))
        found = getattr(module, "OPTIONS", None) or getattr(module, "_OPTIONS", None)
    if isinstance(found, set | frozenset | tuple | list) and all(isinstance(k, str) for k in found):
        return frozenset(found)
    return None


class _RegistryHookTypes:
    """The registry as configuration validation sees it (:class:`timeguard.config.HookTypes`)."""

    def check(self, kind: str, name: str, options: dict[str, Any]) -> list[tuple[str, str]]:
        from timeguard import secrets
        from timeguard.hooks.api import HookConfigError

        try:
            hook_type = find_type(kind)
        except UnknownHookType as exc:
            return [("type", str(exc))]
        try:
            hook_type.from_config(name, options)
        except HookConfigError as exc:
            return list(exc.problems)
        except secrets.Unresolved:
            raise  # config says which secret could not be read here
        except Exception as exc:  # noqa: BLE001 — a plugin's bug is a config error, not a crash
            return [("", f"hook type {kind!r} failed to read its options: {type(exc).__name__}: {exc}")]
        return []

    def options(self, kind: str) -> frozenset[str] | None:
        try:
            return options_of(find_type(kind))
        except UnknownHookType:
            return None

    def schemas(self) -> dict[str, dict[str, Any] | None]:
        """Every usable type's options schema by name (:func:`options_schema_of`), for ``config schema``."""
        found: dict[str, dict[str, Any] | None] = {}
        for name, entry in discover().items():
            if entry.hook_type is None:
                continue
            try:
                found[name] = options_schema_of(entry.hook_type)
            except Exception:  # noqa: BLE001 - a type that cannot describe itself is left open, not fatal
                found[name] = None
        return found


#: Hand this to timeguard.config.load/loads (``hook_types=``) to check every hook's own options with its type.
HOOK_TYPES = _RegistryHookTypes()

