"""The man page and the bash/zsh completions, generated from the argparse tree of :mod:`timeguard.cli.main`.

``python tools/gen_docs.py`` writes docs/man/timeguard.1, contrib/completion/timeguard.bash and
contrib/completion/_timeguard; a test fails when a committed file differs from what this module generates, so
they cannot drift from the real options. Plain code rather than argparse-manpage or shtab: the output depends only
on this file and the parser (no third-party version changes it), and the man page gets the FILES, ENVIRONMENT and
EXIT STATUS sections timeguard needs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

from timeguard import __version__

#: Option values completed with file names (the metavar says what the value is).
FILE_METAVARS = frozenset({"FILE"})


@dataclass(frozen=True)
class Command:
    """One node of the command tree: ``path`` is () for ``timeguard`` itself, ("config", "show") for a leaf."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str  # the one line the parent's list shows

    @property
    def name(self) -> str:
        return " ".join(("timeguard", *self.path))

    @property
    def options(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions if a.option_strings and a.help != argparse.SUPPRESS]

    @property
    def positionals(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions
                if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]

    @property
    def value_flags(self) -> list[str]:
        """Every option string that takes a value (the word after it is that value, never a command)."""
        return [flag for action in self.options if takes_value(action) for flag in action.option_strings]

    @property
    def subcommands(self) -> list[tuple[str, str]]:
        """(name, help) of each subcommand, in the parser's order."""
        for action in self.parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return [(choice.dest, choice.help or "") for choice in action._choices_actions]
        return []


def commands(parser: argparse.ArgumentParser) -> Iterator[Command]:
    """Every node of the tree, depth first, the program itself first."""

    def walk(path: tuple[str, ...], node: argparse.ArgumentParser, help_line: str) -> Iterator[Command]:
        yield Command(path, node, help_line)
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                for name, child in action.choices.items():
                    yield from walk((*path, name), child, helps.get(name, ""))

    yield from walk((), parser, "")


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def value_name(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    return action.dest.upper() if action.option_strings else action.dest


def wants_file(action: argparse.Action) -> bool:
    return takes_value(action) and (value_name(action) in FILE_METAVARS or action.dest == "file")


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The help text with argparse's %(default)s-style fields filled in, as --help shows it."""
    text = action.help or ""
    if "%" in text:
        params = {**vars(action), "prog": parser.prog}
        text = text % {k: getattr(v, "__name__", v) for k, v in params.items()}
    return text


# ------------------------------------------------------------------------------------------------ man page


_ASCII = {"\u2026": "...", "\u2212": "\\-", "\u2013": "\\-", "\u2014": "\\-\\-", "\u2018": "\\(oq",
          "\u2019": "\\(cq", "\u201c": "\\(lq", "\u201d": "\\(rq", "\u2192": "\\->", "\u2264": "<=",
          "\u2265": ">=", "\u00b1": "+/\\-", "\u00d7": "x"}


def _roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, typographic characters as ASCII and anything else
    beyond ASCII as a groff \\[uXXXX] escape (so it renders in every locale, even LC_ALL=C), no control
    character at the start of a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else _ASCII.get(c, f"\\[u{ord(c):04X}]") for c in text)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _bold(text: str) -> str:
    return f"\\fB{_roff(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{_roff(text)}\\fR"


def _synopsis(cmd: Command) -> str:
    parts = [_bold(cmd.name)]
    for action in cmd.options:
        flag = _bold(action.option_strings[0])
        parts.append(f"[{flag} {_italic(value_name(action))}]" if takes_value(action) else f"[{flag}]")
    for action in cmd.positionals:
        name = _italic(value_name(action))
        parts.append(f"[{name}]" if action.nargs in ("?", "*") else name)
    if cmd.subcommands:
        parts.append(_italic("COMMAND"))
    return " ".join(parts)


def man_page(parser: argparse.ArgumentParser) -> str:
    tree = list(commands(parser))
    top = tree[0]
    out = [
        '.\\" Generated by tools/gen_docs.py from timeguard\'s argparse tree (timeguard/cli/docs.py): do not edit.',
        f'.TH TIMEGUARD 1 "" "timeguard {_roff(__version__)}" "User Commands"',
        ".SH NAME",
        "timeguard \\- host time\\-integrity agent: cross\\-checks the clock, detects clock steps, never sets it",
        ".SH SYNOPSIS",
    ]
    for cmd in tree:
        if not cmd.subcommands:
            out += [".PP", _synopsis(cmd)]
    out += [".SH DESCRIPTION", _roff(top.parser.description or "")]
    out += [".SH OPTIONS"]
    for action in top.options:
        out += _man_option(action, top.parser)
    out += [".SH COMMANDS"]
    for cmd in tree[1:]:
        out += [f".SS {_bold(cmd.name)}"]
        out += [_roff(cmd.parser.description or cmd.help)]
        for name, help_line in cmd.subcommands:
            out += [".TP", _bold(f"{cmd.name} {name}"), _roff(help_line)]
        for action in cmd.positionals:
            out += [".TP", _italic(value_name(action)), _roff(_help(action, cmd.parser))]
        for action in cmd.options:
            if action.dest != "help":
                out += _man_option(action, cmd.parser)
    out += [
        ".SH EXIT STATUS",
        "Each command's own codes are given above. A closed output (\\fBtimeguard events | head\\fR) ends the command "
        "quietly with 141, as a shell reports a command killed by SIGPIPE. "
        "\\fBtimeguard run\\fR exits 78 (EX_CONFIG) for an invalid configuration or an unusable state directory: "
        "the systemd unit does not restart it then.",
        ".SH ENVIRONMENT",
        ".TP",
        _bold("TIMEGUARD_CONFIG"),
        "The configuration file when \\fB\\-\\-config\\fR is not given.",
        ".SH FILES",
        ".TP",
        _italic("/etc/timeguard/timeguard.yaml"),
        "The configuration, when it exists and neither \\fB\\-\\-config\\fR nor \\fBTIMEGUARD_CONFIG\\fR names "
        "another; otherwise the embedded defaults (\\fBtimeguard config generate\\fR prints them).",
        ".TP",
        _italic("/var/lib/timeguard/journal.sqlite"),
        "The journal (state_dir): events, checks, the clock floor, hook runs and the alert outbox.",
        ".SH SEE ALSO",
        "\\fBchronyc\\fR(1), \\fBsystemd.exec\\fR(5), \\fBpromtool\\fR(1); the README, the systemd unit "
        "systemd/timeguard.service and the alert rules monitoring/timeguard.rules.yml in the source.",
        "",
    ]
    return "\n".join(out)


def _man_option(action: argparse.Action, parser: argparse.ArgumentParser) -> list[str]:
    flags = ", ".join(_bold(flag) for flag in action.option_strings)
    if takes_value(action):
        flags += " " + _italic(value_name(action))
    return [".TP", flags, _roff(_help(action, parser))]


# ------------------------------------------------------------------------------------------ bash completion


def bash_completion(parser: argparse.ArgumentParser) -> str:
    tree = list(commands(parser))
    out = [
        "# bash completion for timeguard. Generated by tools/gen_docs.py from the argparse tree: do not edit.",
        "# Install: copy to /usr/share/bash-completion/completions/timeguard (or source it from ~/.bashrc).",
        "_timeguard() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" word i',
        "    # The command path typed so far (\"config show\"), skipping options and the values they take.",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        word=${COMP_WORDS[i]}",
        '        case "$cmd/$word" in',
    ]
    for cmd in tree:
        if cmd.value_flags:
            out.append(f'            {_alternatives(cmd.path, cmd.value_flags)}) ((i++)) ;;')
    for cmd in tree[1:]:
        out.append(f'            {_alternatives(cmd.path[:-1], cmd.path[-1:])}) cmd="{" ".join(cmd.path)}" ;;')
    out += [
        "        esac",
        "    done",
        '    case "$cmd/$prev" in',
    ]
    files: list[str] = []
    values: list[str] = []
    for cmd in tree:
        for action in cmd.options:
            if takes_value(action):
                target = files if wants_file(action) else values
                target.append(_alternatives(cmd.path, action.option_strings))
    if files:
        out.append(f'        {"|".join(files)}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
    if values:
        out.append(f'        {"|".join(values)}) COMPREPLY=(); return ;;  # a value: nothing to offer')
    out += [
        "    esac",
        '    local opts="" subs="" file=""',
        '    case "$cmd" in',
    ]
    for cmd in tree:
        opts = [f for a in cmd.options for f in a.option_strings]
        subs = [name for name, _ in cmd.subcommands]
        line = f'        "{" ".join(cmd.path)}") opts="{" ".join(opts)}"'
        if subs:
            line += f' subs="{" ".join(subs)}"'
        if any(wants_file(a) for a in cmd.positionals):
            line += " file=1"
        out.append(line + " ;;")
    out += [
        "    esac",
        '    if [[ $cur == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        '    elif [[ -n $subs ]]; then',
        '        COMPREPLY=($(compgen -W "$subs" -- "$cur"))',
        '    elif [[ -n $file ]]; then',
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "    fi",
        "}",
        "complete -F _timeguard timeguard",
        "",
    ]
    return "\n".join(out)


def _alternatives(path: tuple[str, ...], words: list[str] | tuple[str, ...]) -> str:
    """A bash/zsh case pattern matching "<path>/<word>" for any of ``words`` (quoted: paths have spaces)."""
    return "|".join(f'"{" ".join(path)}/{word}"' for word in words)


# ------------------------------------------------------------------------------------------- zsh completion


def _zsh_single(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_desc(text: str) -> str:
    """A description inside an _arguments spec's [...]: brackets escaped."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_message(text: str) -> str:
    """The message part of an _arguments spec (between colons) or a _describe item's name: colons escaped."""
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _zsh_option(action: argparse.Action, parser: argparse.ArgumentParser) -> list[str]:
    desc = _zsh_desc(_help(action, parser).split(". ")[0])
    flags = action.option_strings
    exclusive = f"({' '.join(flags)})" if len(flags) > 1 else ""
    repeat = "*" if isinstance(action, argparse._AppendAction) else ""
    value = ""
    if takes_value(action):
        value = f":{_zsh_message(value_name(action))}:" + ("_files" if wants_file(action) else " ")
    return [_zsh_single(f"{exclusive}{repeat}{flag}{'=' if flag.startswith('--') and value else ''}[{desc}]{value}")
            for flag in flags]


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    tree = list(commands(parser))
    out = [
        "#compdef timeguard",
        "# zsh completion for timeguard. Generated by tools/gen_docs.py from the argparse tree: do not edit.",
        "# Install: copy to a directory in $fpath (e.g. /usr/share/zsh/vendor-completions/_timeguard).",
        "",
        "_timeguard() {",
        '  local cmd="" word i last=1',
        "  # The command path typed so far, skipping options and the values they take.",
        "  for ((i = 2; i < CURRENT; i++)); do",
        "    word=${words[i]}",
        '    case "$cmd/$word" in',
    ]
    for cmd in tree:
        if cmd.value_flags:
            out.append(f'      ({_alternatives(cmd.path, cmd.value_flags)}) ((i++)) ;;')
    for cmd in tree[1:]:
        out.append(f'      ({_alternatives(cmd.path[:-1], cmd.path[-1:])}) cmd="{" ".join(cmd.path)}"; last=$i ;;')
    out += [
        "    esac",
        "  done",
        "  # From here on the words are those of the command itself, as _arguments expects.",
        '  words=("${(@)words[last,-1]}")',
        "  (( CURRENT -= last - 1 ))",
        "  local -a subs",
        '  case "$cmd" in',
    ]
    for cmd in tree:
        specs = [s for a in cmd.options for s in _zsh_option(a, cmd.parser)]
        for action in cmd.positionals:
            optional = ":" if action.nargs in ("?", "*") else ""
            what = "_files" if wants_file(action) else " "
            specs.append(_zsh_single(f"{optional}:{_zsh_message(value_name(action))}:{what}"))
        out.append(f"    ({_zsh_single(' '.join(cmd.path))})")
        if cmd.subcommands:
            items = " ".join(_zsh_single(f"{_zsh_message(name)}:{help_line}") for name, help_line in cmd.subcommands)
            out.append(f"      subs=({items})")
            specs.append(_zsh_single(": :{_describe command subs}"))
        out.append("      _arguments -s -S : \\")
        out += [f"        {spec} \\" for spec in specs[:-1]]
        out.append(f"        {specs[-1]}")
        out.append("      ;;")
    out += [
        "  esac",
        "}",
        "",
        '_timeguard "$@"',
        "",
    ]
    return "\n".join(out)


#: Where each generated file is committed, relative to the repository root.
OUTPUTS = {
    "docs/man/timeguard.1": man_page,
    "contrib/completion/timeguard.bash": bash_completion,
    "contrib/completion/_timeguard": zsh_completion,
}
