"""Environment files in systemd's ``EnvironmentFile=`` syntax (systemd.exec(5)), the way an application's unit
gives its settings their variables: ``KEY=VALUE`` lines, ``#``/``;`` comment lines, values in single quotes
(taken as written) or double quotes (``\\"``, ``\\\\``, ``\\n``, ``\\$`` escapes), a trailing backslash joining the
next line. ``export KEY=…`` (a shell-style .env file) is accepted too. Pure: :func:`parse` reads text."""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$", "`": "`"}


class EnvFileError(ValueError):
    """A line that is not an assignment; the message names the file and line."""


def parse(text: str, where: str) -> dict[str, str]:
    """The variables ``text`` assigns, in order (a later assignment wins); EnvFileError naming ``where`` and the
    line for anything else."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        i += 1
        while line.endswith("\\") and i < len(lines) and not _open_quote(line):
            line = line[:-1] + lines[i]
            i += 1
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        key, eq, value = stripped.partition("=")
        key = key.strip()
        if not eq or not _NAME.fullmatch(key):
            # the line itself is not shown: it may hold a secret written the wrong way
            raise EnvFileError(f"{where}, line {number}: not a KEY=VALUE assignment (KEY: letters, digits, _)")
        value = value.strip()
        while value[:1] in "'\"" and value and _open_quote(value) and i < len(lines):
            value += "\n" + lines[i]  # a quoted value continues on the next line
            i += 1
        found[key] = _value(value, where, number)
    return found


def _open_quote(text: str) -> bool:
    quote = text[:1]
    if quote not in ("'", '"'):
        return False
    body = text[1:]
    if quote == "'":
        return "'" not in body
    escaped = False
    for char in body:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return False
    return True


def _value(value: str, where: str, number: int) -> str:
    if not value or value[0] not in "'\"":
        return value
    quote = value[0]
    if quote == "'":
        body, _, rest = value[1:].partition("'")
    else:
        chars: list[str] = []
        j, body, rest = 1, "", ""
        while j < len(value):
            char = value[j]
            if char == "\\" and j + 1 < len(value):
                nxt = value[j + 1]
                chars.append(_ESCAPES.get(nxt, "\\" + nxt) if nxt != "\n" else "")
                j += 2
                continue
            if char == '"':
                body, rest = "".join(chars), value[j + 1:]
                break
            chars.append(char)
            j += 1
        else:
            raise EnvFileError(f"{where}, line {number}: a double quote is not closed")
    if rest.strip():
        raise EnvFileError(f"{where}, line {number}: text after the closing quote of {quote}…{quote}")
    return body

