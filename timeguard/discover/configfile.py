"""Add hooks to a configuration file's text without disturbing the rest of it (``timeguard discover --write``).

The file is edited as text, so every comment, blank line and key order stays as the person wrote it:

* a block ``hooks:`` list → the new entries go after its last item, at the same indentation;
* ``hooks:`` with no value, ``null``, ``~`` or ``[]`` → the entries become its list;
* no ``hooks:`` key → ``hooks:`` and the entries are added at the end;
* a flow list with items (``hooks: [{…}]``), a ``hooks`` that is not a list, a file that is not YAML or not a
  mapping → refused with the reason (:class:`EditError`), nothing changed.

The result is parsed again and must hold exactly the old data plus the new hooks at the end of ``hooks``;
anything else is refused too. Comments may be added before the entries (``comment``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from timeguard import config


class EditError(Exception):
    """The file cannot be edited safely; the message says why."""


def add_hooks(text: str, hooks: Sequence[Mapping[str, Any]], comment: str = "") -> str:
    """``text`` with ``hooks`` appended to its ``hooks:`` list (see the module's docstring)."""
    before = _load(text)
    root = yaml.compose(text, Loader=config._BoundedLoader)  # _load has parsed it: no error here
    if root is None:
        before = {}
    elif not isinstance(root, yaml.MappingNode) or not isinstance(before, dict):
        raise EditError("the file is not a mapping of keys: add the hooks by hand")
    items = yaml.safe_dump([dict(h) for h in hooks], sort_keys=False, default_flow_style=False, width=1000)
    comment_lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    entry = _find_hooks(root)
    if entry is None:
        block = ["\n" if lines and lines[-1].strip() else "", "hooks:\n",
                 *_indent([*comment_lines, *items.splitlines()], 2)]
        new = "".join(lines) + "".join(block)
    else:
        key, value = entry
        new = _into(lines, key, value, comment_lines, items)
    _check(before, new, hooks)
    return new


def _find_hooks(root: yaml.Node | None) -> tuple[yaml.Node, yaml.Node] | None:
    if root is None:
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "hooks":
            return key, value
    return None


def _indent(lines: list[str], column: int) -> list[str]:
    return [(" " * column + line if line else "") + "\n" for line in lines]


def _into(lines: list[str], key: yaml.Node, value: yaml.Node, comment: list[str], items: str) -> str:
    if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
        column = _dash_column(lines, value)
        end = max(_last_line(node) for node in value.value)  # the last line holding the list's content
        return "".join([*lines[: end + 1], *_indent([*comment, *items.splitlines()], column),
                        *lines[end + 1:]])
    empty = (isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null") or (
        isinstance(value, yaml.SequenceNode) and not value.value)
    if not empty:
        what = "a flow list ([…])" if isinstance(value, yaml.SequenceNode) else f"not a list ({value.tag})"
        raise EditError(f"hooks (line {key.start_mark.line + 1}) is {what}: add the hooks by hand")
    line_no = key.start_mark.line
    line = lines[line_no]
    # "hooks: []  # comment" → "hooks:  # comment", then the items on the lines below
    empty_value = re.match(r"\s*:\s*(?:null|Null|NULL|~|\[\s*\])?\s*(#.*)?$", line[key.end_mark.column:].rstrip("\n"))
    if empty_value is None:
        raise EditError(f"hooks (line {line_no + 1}) has more on its line than an empty value: add the hooks by hand")
    lines[line_no] = line[: key.end_mark.column] + ":" + (f"  {empty_value.group(1)}" if empty_value.group(1)
                                                           else "") + "\n"
    column = key.start_mark.column + 2
    return "".join([*lines[: line_no + 1], *_indent([*comment, *items.splitlines()], column), *lines[line_no + 1:]])


def _dash_column(lines: list[str], seq: yaml.SequenceNode) -> int:
    """The column of the ``-`` of the list's items (the first item's content starts two columns after it, or
    more: ``-   a``)."""
    first = seq.value[0]
    line = lines[first.start_mark.line]
    dash = line.rfind("-", 0, first.start_mark.column)
    return dash if dash >= 0 else max(0, first.start_mark.column - 2)


def _last_line(node: yaml.Node) -> int:
    """The last line (0-based) that holds part of ``node``'s content, not the blank or comment lines PyYAML's
    block end mark runs on to."""
    if isinstance(node, yaml.ScalarNode):
        end = node.end_mark
        return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line
    pairs = node.value if isinstance(node, yaml.MappingNode) else [(child,) for child in node.value]
    children = [n for pair in pairs for n in pair]
    if not children or node.flow_style:
        return node.end_mark.line if node.end_mark.column > 0 else node.end_mark.line - 1
    return max(_last_line(child) for child in children)


def _load(text: str) -> Any:
    """The file's data as timeguard's loader reads it (bounded aliases and depth, duplicate keys refused, ``on:``
    a name); EditError saying why not."""
    try:
        data, _ = config._parse(text, "the file")  # the loader's own parser, as hooks/listing.py uses it
    except config.ConfigError as exc:
        raise EditError("; ".join((f"line {p.line}: " if p.line else "") + (f"{p.path}: " if p.path else "")
                                  + p.message for p in exc.problems)) from None
    return data


def _check(before: dict[str, Any], new: str, hooks: Sequence[Mapping[str, Any]]) -> None:
    try:
        after = _load(new)
    except EditError as exc:
        raise EditError(f"adding the hooks as text would break the file ({exc}; aliases?): add them by "
                        "hand") from None
    old_hooks = before.get("hooks") or []
    expected = {**before, "hooks": [*old_hooks, *[dict(h) for h in hooks]]}
    if after != expected:
        raise EditError("adding the hooks as text would change more than the hooks list: add them by hand")
