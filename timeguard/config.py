"""YAML → validated, frozen configuration.

One mechanism: the dataclasses below *are* the schema. Each field's type and its ``metadata`` (bounds,
help) drive validation; the embedded ``default.yaml`` supplies every default, and a user's file is merged
over it (mappings key by key, lists replaced). Every error is collected — not just the first — with its
key path and the line it is on, as ``config validate`` shows them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml

from timeguard import secrets
from timeguard.hints import did_you_mean
from timeguard.model import operator_of

DEFAULT_PATH = Path("/etc/timeguard/timeguard.yaml")
ENV_VAR = "TIMEGUARD_CONFIG"


def option(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, choices: tuple[str, ...] | None = None, doc: str = "",
           secret: bool | str = False, schema: dict[str, Any] | None = None) -> Any:
    """A field of a configuration dataclass — the top-level sections below and every hook type's ``Options`` —
    with what the one converter (:func:`convert_options`, ``_convert``) checks and what ``config schema`` says:
    ``lo``/``hi`` bounds (``lo_open``: ``lo`` itself excluded), ``choices``, a one-line ``doc``. ``secret=True``:
    a secret read from ``<name>_env`` or ``<name>_file`` (never written in the file; ``secret="inline"``: the
    bare ``<name>`` is accepted too), resolved by the hook; the field only declares the three keys. ``schema``: the
    JSON Schema of a value the converter leaves to the hook's own checks (type ``Any``)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "doc": doc, "secret": secret,
            "schema": schema}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


_OPERATOR_DOC = ("who runs the source (default: the host's last two DNS labels); the repair's evidence counts "
                 "authenticated sources of independent operators")


@dataclass(frozen=True, slots=True)
class NtpServer:
    host: str
    port: int = option(123, lo=1, hi=65535)
    name: str | None = None
    operator: str | None = option(None, doc=_OPERATOR_DOC)

    @property
    def label(self) -> str:
        return self.name or (self.host if self.port == 123 else f"{self.host}:{self.port}")

    @property
    def owner(self) -> str:
        """The operator: ``operator`` as given (lower-cased), else :func:`operator_of` the host."""
        return owner(self.operator, self.host)


@dataclass(frozen=True, slots=True)
class HttpServer:
    url: str
    ca_bundle: str | None = None
    allow_plain_http: bool = False
    name: str | None = None
    operator: str | None = option(None, doc=_OPERATOR_DOC)

    @property
    def label(self) -> str:
        return self.name or self.url

    @property
    def owner(self) -> str:
        """The operator: ``operator`` as given (lower-cased), else :func:`operator_of` the URL's host."""
        return owner(self.operator, urllib.parse.urlsplit(self.url).hostname or self.url)


def owner(operator: str | None, host: str) -> str:
    """A source's operator: the one configured (``operator:``, compared lower-cased) or :func:`operator_of` its
    host."""
    return operator.strip().lower() if operator else operator_of(host)


@dataclass(frozen=True, slots=True)
class NtsServer:
    """An NTP server with Network Time Security (RFC 8915): NTS-KE on ``ke_port``, then NTP on ``port`` (unless
    the KE server names another server or port, which is then used)."""

    host: str
    port: int = option(123, lo=1, hi=65535)
    ke_port: int = option(4460, lo=1, hi=65535)
    ca_bundle: str | None = None
    name: str | None = None
    operator: str | None = option(None, doc=_OPERATOR_DOC)

    @property
    def label(self) -> str:
        return self.name or (self.host if self.ke_port == 4460 else f"{self.host}:{self.ke_port}")

    @property
    def owner(self) -> str:
        """The operator: ``operator`` as given (lower-cased), else :func:`operator_of` the host."""
        return owner(self.operator, self.host)


@dataclass(frozen=True, slots=True)
class Sources:
    ntp: tuple[NtpServer, ...]
    http: tuple[HttpServer, ...]
    nts: tuple[NtsServer, ...] = ()


@dataclass(frozen=True, slots=True)
class Thresholds:
    warning_s: float = option(lo=0, lo_open=True)
    critical_s: float = option(lo=0, lo_open=True)


@dataclass(frozen=True, slots=True)
class NtpOptions:
    samples: int = option(lo=1, hi=8)
    max_root_distance_s: float = option(lo=0, lo_open=True, hi=16)  # RFC 5905 MAXDISP


@dataclass(frozen=True, slots=True)
class HttpOptions:
    requests: int = option(lo=1, hi=16)


@dataclass(frozen=True, slots=True)
class ConsensusOptions:
    min_sources: int = option(lo=1)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    tick_s: float = option(lo=0.01, hi=60)
    step_threshold_s: float = option(lo=0.05, hi=3600)
    flap_window_s: float = option(lo=0, hi=86400)
    ntp_interval_s: float = option(lo=15, hi=86400)  # RFC 4330: never below 15 s
    http_interval_s: float = option(lo=15, hi=86400)
    floor_interval_s: float = option(lo=1, hi=3600)
    audit_interval_s: float = option(lo=10, hi=86400)
    audit_retry_s: float = option(lo=1, hi=86400)
    events_retention_days: float = option(lo=1, hi=36500)  # retention (timeguard.store.journal.Journal.prune_events)
    events_max: int = option(lo=1000)


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    listen: str | None = None
    textfile: str | None = None


@dataclass(frozen=True, slots=True)
class LoggingOptions:
    level: str = option(choices=("debug", "info", "warning", "error"))
    format: str = option(choices=("auto", "json", "console"))


#: Options every hook has, handled by timeguard itself (a type's from_config never sees them; the plugin API,
#: timeguard.hooks.api, exports them).
COMMON_OPTIONS = frozenset({"type", "name", "on", "timeout_s", "dry_run"})
DEFAULT_TIMEOUT_S = 10.0


def option_names(options_type: Any) -> tuple[str, ...]:
    """The keys an ``Options`` dataclass accepts, in declared order: a secret field gives ``<name>``,
    ``<name>_env`` and ``<name>_file`` (the bare name only to be refused with a way out, unless inline)."""
    names: list[str] = []
    for f in dataclasses.fields(options_type):
        names.append(f.name)
        if f.metadata.get("secret"):
            names += [f"{f.name}_env", f"{f.name}_file"]
    return tuple(names)


def convert_options(options_type: Any, options: typing.Mapping[str, Any], *, hook: str,
                    extra: typing.Iterable[str] = ()) -> tuple[Any, list[tuple[str, str]]]:
    """A hook's own options → an instance of its ``Options`` dataclass, with the converter that checks the rest of
    the configuration (types, bounds, choices, "did you mean"). Returns ``(instance or None, problems)``; each
    problem is ``(key relative to the hook, message)``, which config turns into path and line. A value with a
    problem is left at its default (the instance is None only when a required one is missing or wrong). Secret
    fields are only declared here: the hook reads them (None in the instance). ``extra``: more keys the hook
    accepts and checks itself (a repair target's own)."""
    problems: list[ConfigProblem] = []
    names = (*option_names(options_type), *extra)
    for key in options:
        if key not in names:
            hint = did_you_mean(str(key), names, listing="its options")
            problems.append(ConfigProblem(str(key), f"unknown option of a {hook} hook{hint}"))
    hints = typing.get_type_hints(options_type)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(options_type):
        if f.metadata.get("secret"):
            continue
        if f.name not in options:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                doc = f.metadata.get("doc")
                problems.append(ConfigProblem(f.name, f"is required ({doc})" if doc else "is required"))
            continue
        value = options[f.name]
        if hints[f.name] is Any:
            kwargs[f.name] = value  # the hook checks it (and says how in its schema)
            continue
        converted = _convert(hints[f.name], value, f.name, {}, problems, hook_types=None)
        if converted is None and value is not None:
            continue
        if converted is not None or value is None:
            before = len(problems)
            _check_bounds(f, converted, f.name, {}, problems)
            if len(problems) == before:
                kwargs[f.name] = converted
    try:
        instance = options_type(**kwargs)
    except TypeError:  # a required key was missing or invalid: already reported
        instance = None
    return instance, [(p.path, p.message) for p in problems]


class HookTypes(Protocol):
    """What validation asks of the hook types to check each hook's own options. Configuration validates its own
    keys and never imports a plugin: the caller hands this in (timeguard.hooks.registry.HOOK_TYPES), or None to
    leave a hook's own options to be checked where the hook is built."""

    def check(self, kind: str, name: str, options: dict[str, Any]) -> list[tuple[str, str]]:
        """The problems of one hook's own options: (key relative to the hook — ``"type"`` for an unknown type —,
        message). May raise secrets.Unresolved (a secret that cannot be read here)."""
        ...

    def options(self, kind: str) -> frozenset[str] | None:
        """The options the type declares (None: unknown), to name the way out of an inline secret."""
        ...


@dataclass(frozen=True, slots=True)
class HookSpec:
    """One item of ``hooks:``; ``options`` are the type's own keys, already validated by its from_config."""

    type: str
    name: str
    on: tuple[str, ...] | None  # None: the type's default kinds
    timeout_s: float
    dry_run: bool
    options: dict[str, Any]

    @classmethod
    def from_raw(cls, value: Any, path: str, lines: Lines, problems: list[ConfigProblem], *,
                 hook_types: HookTypes | None) -> HookSpec | None:
        from timeguard.events import EventKind

        def bad(key: str, message: str) -> None:
            sub = f"{path}.{key}" if key else path
            problems.append(ConfigProblem(sub, message, _line(lines, sub)))

        if not isinstance(value, dict):
            bad("", f"must be a mapping with type, name and the hook's options, not {_kind(value)}")
            return None
        before = len(problems)
        kind, name = value.get("type"), value.get("name")
        for key, got in (("type", kind), ("name", name)):
            if not isinstance(got, str) or not got.strip():
                bad(key, "is required (text)" if got is None else f"must be non-empty text, not {got!r}")
        on = value.get("on")
        kinds: tuple[str, ...] | None = None
        if on is not None:
            known = [k.value for k in EventKind]
            if not isinstance(on, list) or not all(isinstance(k, str) for k in on):
                bad("on", f"must be a list of event kinds ({', '.join(known)})")
            else:
                for i, k in enumerate(on):
                    if k not in known:
                        bad(f"on[{i}]", f"unknown event kind {k!r}{did_you_mean(k, known)}")
                kinds = tuple(on)
        timeout = value.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            bad("timeout_s", f"must be a number of seconds in (0, 3600], not {timeout!r}")
        dry_run = value.get("dry_run", False)
        if not isinstance(dry_run, bool):
            bad("dry_run", f"must be true or false, not {dry_run!r}")
        options = {k: v for k, v in value.items() if k not in COMMON_OPTIONS}
        if hook_types is not None and isinstance(kind, str) and kind.strip():
            deferred = secrets.deferred_so_far()
            try:
                for key, message in hook_types.check(kind, name if isinstance(name, str) else "?", options):
                    bad(key, message)
            except secrets.Unresolved:
                pass  # it needs a secret that cannot be read here to check more: a warning below says which
            for key, why in secrets.deferred_so_far()[len(deferred):]:
                sub = f"{path}.{key}"
                problems.append(ConfigProblem(sub, f"{why}: not readable here (fine if only the service can "
                                              "read it, e.g. a systemd credential; timeguard run refuses to "
                                              "start without it)", _line(lines, sub),
                                              warning=True))
        if any(not p.warning for p in problems[before:]):
            return None
        return cls(kind, name, kinds, float(timeout), dry_run, options)


@dataclass(frozen=True, slots=True)
class Config:
    sources: Sources
    thresholds: Thresholds
    timeout_s: float = option(lo=0, lo_open=True, hi=300)
    ntp: NtpOptions
    http: HttpOptions
    consensus: ConsensusOptions
    state_dir: str
    daemon: DaemonOptions
    metrics: MetricsOptions
    logging: LoggingOptions
    hooks: tuple[HookSpec, ...]
    origin: str = field(default="<embedded defaults>", compare=False)  # where it was loaded from
    #: What is valid but deserves a word: an inline secret, a secret that could not be read here (load with
    #: resolve_secrets=False). ``config validate`` prints them; they never stop anything.
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)


_META_FIELDS = ("origin", "warnings")  # not configuration keys


# --------------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str  # "sources.ntp[1].port"
    message: str
    line: int | None = None
    warning: bool = False  # valid, but worth saying (Config.warnings)

    def format(self, origin: str) -> str:
        where = f"{origin}:{self.line}" if self.line else origin
        return f"{where}: {self.path or '(top level)'}: {secrets.redact_text(self.message)}"


class ConfigError(Exception):
    """Every problem found in one configuration file, each with its key path and line."""

    def __init__(self, origin: str, problems: list[ConfigProblem],
                 warnings: tuple[ConfigProblem, ...] = ()) -> None:
        self.origin = origin
        self.problems = problems
        self.warnings = warnings  # found beside the errors (what Config.warnings would have held)
        super().__init__("\n".join(p.format(origin) for p in problems))


# ------------------------------------------------------------------------------------------------- loading


def default_text() -> str:
    """The documented default configuration (``config generate``; identical to config/timeguard.yaml)."""
    return resources.files("timeguard").joinpath("default.yaml").read_text(encoding="utf-8")


def discover(explicit: str | None) -> Path | None:
    """The file to load: ``--config``, else ``$TIMEGUARD_CONFIG``, else /etc/timeguard/timeguard.yaml if it
    exists, else None (the embedded defaults). A file named explicitly must exist (load reports it)."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: Path | str | None = None, *, resolve_secrets: bool = True,
         hook_types: HookTypes | None = None) -> Config:
    """Load and validate ``path`` merged over the defaults (None: the defaults alone).

    ``hook_types`` checks each hook's own options too (timeguard.hooks.registry.HOOK_TYPES, or
    :func:`timeguard.hooks.registry.load_config`); without it they are checked where the hooks are built.

    ``resolve_secrets=False`` is for commands that do not use the hooks' secrets (check, status, events,
    config validate/show, hooks list): a secret that cannot be read here — a systemd credential that exists only
    inside the service, a variable only its unit sets — becomes a warning in ``Config.warnings``, not an error.
    The daemon (and a hook built from the result) still reads every secret it uses."""
    if path is None:
        return loads("", "<embedded defaults>", hook_types=hook_types)
    origin = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")
        raise ConfigError(origin, [problem]) from exc
    except UnicodeDecodeError as exc:
        problem = ConfigProblem("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")
        raise ConfigError(origin, [problem]) from exc
    return loads(text, origin, resolve_secrets=resolve_secrets, hook_types=hook_types)


def loads(text: str, origin: str = "<string>", *, resolve_secrets: bool = True,
          hook_types: HookTypes | None = None) -> Config:
    """Validate configuration text merged over the defaults (``resolve_secrets``, ``hook_types``: see
    :func:`load`)."""
    if not resolve_secrets:
        with secrets.deferring():
            return loads(text, origin, hook_types=hook_types)
    defaults, _ = _parse(default_text(), "<embedded defaults>")
    user, lines = _parse(text, origin)
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(origin, [ConfigProblem("", f"must be a mapping of keys, not {_kind(user)}", 1)])
    sources = user.get("sources")
    left_out: tuple[ConfigProblem, ...] = ()
    if isinstance(defaults, dict) and not (isinstance(sources, dict) and "nts" in sources):
        if isinstance(sources, dict):
            # A file that names its sources but predates NTS keeps exactly those: an upgrade must not start asking
            # public servers that a site with its own NTP/HTTPS sources (maybe offline) never chose.
            defaults = {**defaults, "sources": {**defaults.get("sources", {}), "nts": []}}
        elif (why := missing_nts_extra()) is not None:
            # The defaults' NTS servers need the nts extra; without it the defaults still work (NTP + HTTPS), and
            # say what is missing — only a file that asks for NTS itself makes the missing extra an error.
            defaults = {**defaults, "sources": {**defaults.get("sources", {}), "nts": []}}
            left_out = (ConfigProblem("sources.nts", f"the defaults' NTS servers are left out: {why}",
                                      warning=True),)
    cfg = _build(_merge(defaults, user), lines, origin, hook_types)
    return dataclasses.replace(cfg, warnings=cfg.warnings + left_out) if left_out else cfg


def to_dict(cfg: Any) -> Any:
    """The effective configuration as plain data (``config show``)."""
    if dataclasses.is_dataclass(cfg):
        return {
            f.name: to_dict(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.name not in _META_FIELDS and not (f.default is None and getattr(cfg, f.name) is None)
        }
    if isinstance(cfg, tuple):
        return [to_dict(x) for x in cfg]
    return cfg


# ------------------------------------------------------------------------------------------------ internals

Lines = dict[str, int]


#: A configuration nests a handful of levels (hooks[0].headers.X.env); aliases may repeat a block a few times.
#: Beyond these the file is refused while it is being composed — before anything is expanded — so a 300-byte
#: alias bomb ("billion laughs") or 10,000 nested ``[`` cost milliseconds, not minutes, gigabytes or a
#: RecursionError. (What is written out costs in proportion to the file's size, so only aliases are budgeted.)
MAX_DEPTH = 32
MAX_ALIAS_VALUES = 10_000  # values that aliases add to the document, all aliases together
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a configuration must not be: too deep, expanding too much, a recursive alias."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts, while composing, how deep the nodes nest and how many values the document has
    once every alias is expanded (an alias costs the size of what it names). Composing shares an aliased node
    instead of copying it, so these counts are known before anything expands; past a limit it stops with the
    line of the node or alias that went over."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # nesting of the node being composed
        self._aliased = 0  # values the aliases so far add to the document (each: the size of what it names)
        self._shape: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height) once the node is complete

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # an undefined alias is PyYAML's error
            shape = self._shape.get(id(node))
            if shape is None:  # named while it is still being composed: it contains itself
                raise _Refused(None, None, f"alias *{event.anchor} refers to a value that contains it "
                               "(a recursive alias): refused", event.start_mark)
            values, height = shape
            self._aliased += values
            if self._aliased > MAX_ALIAS_VALUES:
                raise _Refused(None, None, f"aliases add more than {MAX_ALIAS_VALUES:,} values to the file "
                               f"(*{event.anchor} adds {values:,}; a YAML alias bomb?): refused", event.start_mark)
            if self._depth + height > MAX_DEPTH:
                raise _Refused(None, None, f"alias *{event.anchor} nests values more than {MAX_DEPTH} levels deep: "
                               "refused", event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"values nested more than {MAX_DEPTH} levels deep: refused",
                           event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        shapes = [self._shape[id(child)] for child in children]
        self._shape[id(node)] = (1 + sum(v for v, _ in shapes), 1 + max((h for _, h in shapes), default=0))
        return node


def _parse(text: str, origin: str) -> tuple[Any, Lines]:
    """YAML text → plain data, plus the line of every key path; duplicate keys are errors."""
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        message = problem if isinstance(exc, _Refused) else f"not valid YAML: {problem}"
        raise ConfigError(origin, [ConfigProblem("", message, line)]) from exc
    lines: Lines = {}
    problems: list[ConfigProblem] = []
    if node is None:
        return None, lines
    data = _to_python(node, "", lines, problems)
    if problems:
        raise ConfigError(origin, problems)
    return data, lines


def _to_python(node: yaml.Node, path: str, lines: Lines, problems: list[ConfigProblem]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in _pairs(node, path, problems):
            # A key is its text: YAML 1.1 would turn `on:` (a hook's event kinds) into the boolean True.
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.append(ConfigProblem(path, f"keys must be names, not {key_node.value!r}",
                                              key_node.start_mark.line + 1))
                continue
            sub = f"{path}.{key}" if path else key
            if key in out:
                problems.append(ConfigProblem(sub, "duplicate key (only one may be given)",
                                              key_node.start_mark.line + 1))
                continue
            out[key] = _to_python(value_node, sub, lines, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, f"{path}[{i}]", lines, problems) for i, v in enumerate(node.value)]
    try:
        return yaml.SafeLoader(" ").construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(ConfigProblem(path, f"bad value: {getattr(exc, 'problem', exc)}", lines[path]))
        return None


def _pairs(node: yaml.MappingNode, path: str, problems: list[ConfigProblem]) -> list[tuple[yaml.Node, yaml.Node]]:
    """A mapping's (key, value) nodes with ``<<:`` merge keys resolved as YAML 1.1 says: the keys written in the
    mapping win, then the merged mappings in the order given; each line stays the line it was written on."""
    written: list[tuple[yaml.Node, yaml.Node]] = []
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE_TAG:
            written.append((key_node, value_node))
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                merged.extend(_pairs(source, path, problems))
            else:
                problems.append(ConfigProblem(f"{path}.<<" if path else "<<", "a merge key (<<) takes a mapping or "
                                              "a list of mappings (e.g. <<: *defaults)", key_node.start_mark.line + 1))
    if not merged:
        return written
    have = {k.value for k, _ in written if isinstance(k, yaml.ScalarNode)}
    for key_node, value_node in merged:
        if isinstance(key_node, yaml.ScalarNode):
            if key_node.value in have:
                continue  # written in the mapping itself, or merged from an earlier source
            have.add(key_node.value)
        written.append((key_node, value_node))
    return written


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return over


def _build(data: Any, lines: Lines, origin: str, hook_types: HookTypes | None) -> Config:
    problems: list[ConfigProblem] = []
    cfg = _convert(Config, data, "", lines, problems, hook_types=hook_types)
    _logical_checks(data, lines, problems)
    _inline_secrets(data, "", lines, problems, hook_options=_hook_options(data, hook_types))
    problems.sort(key=lambda p: (p.line or 0, p.path))
    errors = [p for p in problems if not p.warning]
    warnings = tuple(p for p in problems if p.warning)
    if errors:
        raise ConfigError(origin, errors, warnings)
    return dataclasses.replace(cfg, origin=origin, warnings=warnings)


def _hook_options(data: Any, hook_types: HookTypes | None) -> dict[str, frozenset[str] | None]:
    """For each ``hooks[i]``: the options its type declares (None: unknown), to name the way out of a secret."""
    found: dict[str, frozenset[str] | None] = {}
    hooks = data.get("hooks") if isinstance(data, dict) else None
    for i, hook in enumerate(hooks if isinstance(hooks, list) else []):
        kind = hook.get("type") if isinstance(hook, dict) else None
        found[f"hooks[{i}]"] = hook_types.options(kind) if hook_types is not None and isinstance(kind, str) else None
    return found


def _inline_secrets(value: Any, path: str, lines: Lines, problems: list[ConfigProblem], key: str = "", *,
                    hook_options: dict[str, frozenset[str] | None]) -> None:
    """A warning for every value ``config show`` masks (timeguard.secrets.redact): a secret written in the file
    ends up in copies, backups and version control. Says where else it can come from."""
    if isinstance(value, dict):
        if set(value) in ({"env"}, {"file"}):
            return
        for k, v in value.items():
            _inline_secrets(v, f"{path}.{k}" if path else str(k), lines, problems, str(k), hook_options=hook_options)
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _inline_secrets(v, f"{path}[{i}]", lines, problems, key, hook_options=hook_options)
        return
    if value is None or isinstance(value, bool) or secrets.redact(value, key=key) == value:
        return
    parent = _LAST_STEP.sub("", path)
    hook = re.match(r"hooks\[\d+\]", path)
    known = hook_options.get(hook.group(0)) if hook else None
    if parent.endswith((".headers", ".env")):
        way_out = "write {file: PATH} (a systemd credential) or {env: VAR} instead"
    elif hook and parent == hook.group(0) and known is not None and f"{key}_file" in known:
        way_out = f"give it as {key}_file (a systemd credential, LoadCredential=) or {key}_env instead"
    elif hook and known is not None and "headers" in known:
        way_out = "send it in a header instead (headers: {Authorization: {file: PATH}}) if the receiver takes one"
    elif hook:
        way_out = "move it to a file or variable the hook type reads (see its documentation)"
    else:
        way_out = "keep secrets out of this file"
    problems.append(ConfigProblem(path, f"holds a secret inline (config show masks it, but copies, backups and "
                                  f"version control keep it): {way_out}", _line(lines, path), warning=True))


_LAST_STEP = re.compile(r"(?:\.[^.\[]+|\[\d+\]|^[^.\[]+)$")


def _line(lines: Lines, path: str) -> int | None:
    """The line of ``path``, or of its nearest ancestor the file has (a missing key: its parent)."""
    while path:
        if path in lines:
            return lines[path]
        path = _LAST_STEP.sub("", path)
    return None


def _kind(value: Any) -> str:
    return {
        bool: "true/false", int: "a whole number", float: "a number", str: "text", list: "a list",
        dict: "a mapping", type(None): "nothing (null)",
    }.get(type(value), type(value).__name__)


def _convert(tp: Any, value: Any, path: str, lines: Lines, problems: list[ConfigProblem], *,
             hook_types: HookTypes | None) -> Any:
    def bad(message: str) -> None:
        problems.append(ConfigProblem(path, message, _line(lines, path)))

    origin = typing.get_origin(tp)
    if hasattr(tp, "from_raw"):  # types with keys of their own (a hook's options) validate themselves
        return tp.from_raw(value, path, lines, problems, hook_types=hook_types)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            bad(f"must be a mapping of keys, not {_kind(value)}")
            return None
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.name not in _META_FIELDS}
        for key in value:
            if key not in fields:
                sub = f"{path}.{key}" if path else key
                hint = did_you_mean(key, fields, listing="known keys")
                problems.append(ConfigProblem(sub, f"unknown key{hint}", _line(lines, sub)))
        kwargs = {}
        for name, f in fields.items():
            sub = f"{path}.{name}" if path else name
            if name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    problems.append(ConfigProblem(sub, "is required", _line(lines, path)))
                continue
            converted = _convert(hints[name], value[name], sub, lines, problems, hook_types=hook_types)
            if converted is not None or value[name] is None:
                _check_bounds(f, converted, sub, lines, problems)
                kwargs[name] = converted
        try:
            return tp(**kwargs)
        except TypeError:
            return None  # a required key was missing or invalid: already reported
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            bad(f"must be a mapping, not {_kind(value)}")
            return None
        (_, item_tp) = typing.get_args(tp)
        return {k: _convert(item_tp, v, f"{path}.{k}", lines, problems, hook_types=hook_types)
                for k, v in value.items()}
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            bad(f"must be a list, not {_kind(value)}")
            return None
        items = [_convert(item_tp, v, f"{path}[{i}]", lines, problems, hook_types=hook_types)
                 for i, v in enumerate(value)]
        return tuple(items)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, lines, problems, hook_types=hook_types)
    if tp is bool:
        if isinstance(value, bool):
            return value
        bad(f"must be true or false, not {_kind(value)} {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        bad(f"must be a whole number, not {_kind(value)} {value!r}")
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                bad(f"must be a finite number, not {value!r}")
                return None
            return float(value)
        bad(f"must be a number of seconds, not {_kind(value)} {value!r}")
        return None
    if tp is str:
        if isinstance(value, str) and value.strip():
            return value
        bad(f"must be non-empty text, not {_kind(value)} {value!r}")
        return None
    raise TypeError(f"config schema: unsupported type {tp!r} at {path}")  # a bug in this module


def _check_bounds(f: dataclasses.Field[Any], value: Any, path: str, lines: Lines,
                  problems: list[ConfigProblem]) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        problems.append(ConfigProblem(path, f"must be one of {', '.join(choices)}, not {value!r}", _line(lines, path)))
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open")
    if lo is not None and (value <= lo if lo_open else value < lo):
        problems.append(ConfigProblem(path, f"must be {'>' if lo_open else '≥'} {lo:g}, not {value:g}",
                                      _line(lines, path)))
    elif hi is not None and value > hi:
        problems.append(ConfigProblem(path, f"must be ≤ {hi:g}, not {value:g}", _line(lines, path)))


def _logical_checks(data: Any, lines: Lines, problems: list[ConfigProblem]) -> None:
    """Checks across keys, run on the raw data so they are reported together with the type errors."""

    def bad(path: str, message: str) -> None:
        problems.append(ConfigProblem(path, message, _line(lines, path)))

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    def section(key: str) -> dict[str, Any]:
        value = data.get(key) if isinstance(data, dict) else None
        return value if isinstance(value, dict) else {}

    warning, critical = section("thresholds").get("warning_s"), section("thresholds").get("critical_s")
    if number(warning) and number(critical) and critical <= warning:
        bad("thresholds.critical_s", f"must be greater than thresholds.warning_s ({warning:g})")

    sources = section("sources")
    counted = 0
    for kind, label in (("ntp", _ntp_label), ("http", _http_label), ("nts", _nts_label)):
        entries = sources.get(kind)
        if not isinstance(entries, list):
            continue
        counted += len(entries)
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            path = f"sources.{kind}[{i}]"
            if kind == "http":
                _check_http_entry(entry, path, bad)
            _check_ca_bundle(entry, path, bad)
            key = label(entry)
            if key is None:
                continue
            if key in seen:
                bad(path, f"same source as sources.{kind}[{seen[key]}] ({key}); "
                    "a duplicate would count twice in the majority")
            seen.setdefault(key, i)
    nts = sources.get("nts")
    if isinstance(nts, list) and nts and (why := missing_nts_extra()) is not None:
        bad("sources.nts", why)
    _check_metrics(section("metrics"), bad)
    hooks = data.get("hooks") if isinstance(data, dict) else None
    if isinstance(hooks, list):
        names: dict[str, int] = {}
        for i, hook in enumerate(hooks):
            name = hook.get("name") if isinstance(hook, dict) else None
            if isinstance(name, str):
                if name in names:
                    bad(f"hooks[{i}].name",
                        f"{name!r} is already the name of hooks[{names[name]}]; names must be unique")
                names.setdefault(name, i)
    min_sources = section("consensus").get("min_sources")
    # The default min_sources is capped at the sources configured (a single server is a valid check, whose
    # verdict says it cannot be outvoted); only a min_sources the file itself sets can contradict its sources.
    if number(min_sources) and counted < min_sources and (counted == 0 or "consensus.min_sources" in lines):
        bad("consensus.min_sources", f"is {min_sources} but only {counted} sources are configured: "
            "every check would be UNKNOWN")


def _ntp_label(entry: dict[str, Any]) -> str | None:
    host, port = entry.get("host"), entry.get("port", 123)
    return f"{host}:{port}" if isinstance(host, str) else None


def _nts_label(entry: dict[str, Any]) -> str | None:
    host, ke_port = entry.get("host"), entry.get("ke_port", 4460)
    return f"{host}:{ke_port}" if isinstance(host, str) else None


def _http_label(entry: dict[str, Any]) -> str | None:
    url = entry.get("url")
    return url if isinstance(url, str) else None


def _check_http_entry(entry: dict[str, Any], path: str, bad: Any) -> None:
    url = entry.get("url")
    if isinstance(url, str):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            bad(f"{path}.url", f"must be an https:// URL with a host, not {url!r}")
        elif parsed.scheme == "http" and entry.get("allow_plain_http") is not True:
            bad(f"{path}.url", "plain http:// can be forged by anyone on the path; use https://, "
                "or set allow_plain_http: true for a network you trust")


def missing_nts_extra() -> str | None:
    """Why NTS sources cannot run here (the ``nts`` extra is not installed), or None; finds the modules without
    importing them (pyOpenSSL loads OpenSSL: a daemon without NTS sources must not pay for it)."""
    missing = [name for name in ("OpenSSL", "cryptography") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"NTS sources need {' and '.join(missing)}, not installed here: pip install 'timeguard[nts]'"


def _check_ca_bundle(entry: dict[str, Any], path: str, bad: Any) -> None:
    ca_bundle = entry.get("ca_bundle")
    if isinstance(ca_bundle, str) and not os.access(ca_bundle, os.R_OK):
        bad(f"{path}.ca_bundle", f"cannot read the CA bundle {ca_bundle!r}")


def _check_metrics(metrics: dict[str, Any], bad: Any) -> None:
    listen, textfile = metrics.get("listen"), metrics.get("textfile")
    if isinstance(listen, str):
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            bad("metrics.listen", f"must be HOST:PORT, e.g. 127.0.0.1:9958, not {listen!r}")
    if isinstance(textfile, str) and not textfile.endswith(".prom"):
        bad("metrics.textfile", f"must end in .prom (node_exporter reads only *.prom), not {textfile!r}")


# ------------------------------------------------------------------------------------------- JSON Schema

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(hook_options: typing.Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The whole configuration as a JSON Schema (draft 2020-12), for editors (yaml-language-server) and CI:
    the sections from the dataclasses above with the embedded defaults, and ``hooks:`` items with the options
    every hook has plus each type's own. ``hook_options``: type name → :func:`options_schema` of its ``Options``
    (None for a type that declares none: its options are left open). What the schema cannot say — checks across
    keys, files that must exist, a program on PATH — ``config validate`` still checks."""
    defaults, _ = _parse(default_text(), "<embedded defaults>")
    schema = _schema_of(Config, defaults, hook_options)
    return {"$schema": SCHEMA_DIALECT, "title": "timeguard configuration",
            "description": "timeguard's YAML configuration (timeguard config schema); merged over the defaults of "
                           "timeguard config generate, so no key is required", **schema}


def options_schema(options_type: Any) -> dict[str, Any]:
    """An ``Options`` dataclass as the ``properties``/``required`` of a JSON Schema object (secrets expanded to
    their ``_env``/``_file`` keys; the bare key only where it may be written inline)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    hints = typing.get_type_hints(options_type)
    for f in dataclasses.fields(options_type):
        doc = f.metadata.get("doc") or ""
        if f.metadata.get("secret"):
            text = {"type": "string", "minLength": 1}
            if f.metadata["secret"] == "inline":  # noqa: S105 - a marker, not a password
                properties[f.name] = {**text, "description": f"{doc} (inline: discouraged)".strip()}
            properties[f"{f.name}_env"] = {**text, "description": f"{doc}: the environment variable holding it"}
            properties[f"{f.name}_file"] = {**text, "description": f"{doc}: the file holding it (relative: in "
                                                                   "$CREDENTIALS_DIRECTORY)"}
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        properties[f.name] = _field_schema(f, hints[f.name], default, {})
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"properties": properties, "required": required}


def _field_schema(f: dataclasses.Field[Any], tp: Any, default: Any,
                  hook_options: typing.Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    meta = f.metadata
    schema = dict(meta["schema"]) if meta.get("schema") else _schema_of(tp, default, hook_options)
    if meta.get("choices"):
        schema["enum"] = list(meta["choices"])
    if meta.get("lo") is not None:
        schema["exclusiveMinimum" if meta.get("lo_open") else "minimum"] = meta["lo"]
    if meta.get("hi") is not None:
        schema["maximum"] = meta["hi"]
    if meta.get("doc"):
        schema["description"] = meta["doc"]
    if default is not None and not isinstance(default, dict | list) and schema.get("type") != "object":
        schema["default"] = default
    return schema


def _schema_of(tp: Any, default: Any, hook_options: typing.Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    if tp is HookSpec:
        return _hook_schema(hook_options)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        given = default if isinstance(default, dict) else {}
        properties = {}
        required = []
        for f in dataclasses.fields(tp):
            if f.name in _META_FIELDS:
                continue
            value = given.get(f.name, None if f.default is dataclasses.MISSING else f.default)
            properties[f.name] = _field_schema(f, hints[f.name], value, hook_options)
            if f.name not in given and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            out["required"] = required
        return out
    origin = typing.get_origin(tp)
    if origin is tuple:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0], None, hook_options)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(typing.get_args(tp)[1], None, hook_options)}
    if origin in (types.UnionType, typing.Union):
        (arg,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return {"anyOf": [_schema_of(arg, default, hook_options), {"type": "null"}]}
    simple = {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
              str: {"type": "string", "pattern": r"\S"}}
    if tp in simple:
        return dict(simple[tp])
    return {}  # Any: the hook checks it


def _hook_schema(hook_options: typing.Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    from timeguard.events import EventKind

    common: dict[str, Any] = {
        "type": {"type": "string", "pattern": r"\S", "description": "the hook type (an entry point in "
                 "timeguard.hooks): " + ", ".join(sorted(hook_options))},
        "name": {"type": "string", "pattern": r"\S", "description": "unique; shown in logs, the journal and "
                 "timeguard hooks list"},
        "on": {"type": "array", "items": {"enum": [k.value for k in EventKind]},
               "description": "the event kinds it runs for (default: the type's own)"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": DEFAULT_TIMEOUT_S,
                      "description": "seconds a run may take"},
        "dry_run": {"type": "boolean", "default": False,
                    "description": "the hook says what it would do, and does nothing"},
    }
    branches = []
    for kind, own in sorted(hook_options.items()):
        if own is None:
            continue
        then = {"properties": {**common, **own["properties"]},
                "additionalProperties": own.get("additionalProperties", False)}  # open: a target's own options
        if own["required"]:
            then["required"] = list(own["required"])
        if own.get("anyOf"):  # one of several ways to give something (a service, or stop/start commands)
            then["anyOf"] = list(own["anyOf"])
        branches.append({"if": {"properties": {"type": {"const": kind}}, "required": ["type"]}, "then": then})
    schema: dict[str, Any] = {"type": "object", "required": ["type", "name"], "properties": common}
    if branches:
        schema["allOf"] = branches
    return schema
