"""Hostile YAML (issue 9, item 6): alias bombs, wide fan-out, deep nesting, merge-key abuse and recursive aliases
are refused while the file is composed, with the line — never expanded, never a RecursionError.

No test here is timed: the bombs are sized so that expanding them could not finish at all (9**12 values), so a
test that returns proves the cost was bounded before expansion. An oracle independent of the loader (PyYAML's
own composer, which shares aliased nodes, plus a memoised count) says how large each document would be.
"""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeguard import config

LIMIT = config.MAX_ALIAS_VALUES
DEPTH = config.MAX_DEPTH


def refusal(text: str) -> config.ConfigProblem:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "bomb.yaml")
    (problem,) = info.value.problems
    return problem


def aliased_size(text: str) -> int:
    """Values that aliases add to the document: its size with every alias expanded, less the values written
    (the oracle: plain PyYAML composition, which shares an aliased node instead of copying it)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) not in memo:
            if isinstance(n, yaml.SequenceNode):
                memo[id(n)] = 1 + sum(size(c) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                memo[id(n)] = 1 + sum(size(k) + size(v) for k, v in n.value)
            else:
                memo[id(n)] = 1
        return memo[id(n)]

    return 0 if node is None else size(node) - len(memo)


def first_line_over(text: str) -> int:
    """The first line whose document prefix (lines 1..n) expands beyond the limit."""
    lines = text.splitlines(keepends=True)
    for n in range(1, len(lines) + 1):
        if aliased_size("".join(lines[:n])) > LIMIT:
            return n
    raise AssertionError("the document is within the limit")


def billion_laughs(levels: int, width: int, flow: bool = True) -> str:
    rows = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        refs = [f"*a{i - 1}"] * width
        rows.append(f"a{i}: &a{i} [{', '.join(refs)}]" if flow
                    else f"a{i}: &a{i}\n" + "".join(f"  - {r}\n" for r in refs).rstrip("\n"))
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------- alias bombs


@pytest.mark.parametrize("levels", [6, 7, 9, 12])
def test_the_issue_s_330_byte_bomb_is_refused_at_the_alias_that_goes_over(levels):
    text = billion_laughs(levels, 9)
    assert len(text) < 60 * levels  # the issue's 330 bytes at 6 levels took 10 s, 7 levels 75 s and ~1 GB
    problem = refusal(text)
    assert "alias bomb" in problem.message and f"aliases add more than {LIMIT:,} values" in problem.message
    assert problem.line == first_line_over(text)
    assert re.search(r"\*a\d+ adds [\d,]+", problem.message)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(levels=st.integers(2, 14), width=st.integers(2, 30), flow=st.booleans())
def test_any_bomb_over_the_budget_is_refused_and_any_under_it_is_read(levels, width, flow):
    text = billion_laughs(levels, width, flow)
    if aliased_size(text) <= LIMIT:
        with pytest.raises(config.ConfigError) as info:  # within budget: read, then refused only as unknown keys
            config.loads(text, "t.yaml")
        assert all("unknown key" in p.message for p in info.value.problems), info.value.problems
    else:
        problem = refusal(text)
        assert "alias bomb" in problem.message and problem.line == first_line_over(text)


@settings(max_examples=25, deadline=None)
@given(fan_out=st.integers(1, 3 * LIMIT), block=st.integers(1, 60))
def test_wide_alias_fan_out_is_counted_by_what_each_alias_expands_to(fan_out, block):
    # One anchored list of `block` values, named `fan_out` times: no nesting at all, just width.
    text = (f"x: &x [{', '.join(['v'] * block)}]\n"
            f"y: [{', '.join(['*x'] * fan_out)}]\n")
    if aliased_size(text) <= LIMIT:
        data, _ = config._parse(text, "t.yaml")
        assert len(data["y"]) == fan_out and data["y"][0] == ["v"] * block
    else:
        problem = refusal(text)
        assert problem.line == 2 and "*x adds" in problem.message


def test_many_aliases_of_a_scalar_are_values_too():
    text = "s: &s word\nmany: [" + ", ".join(["*s"] * (LIMIT + 1)) + "]\n"
    assert refusal(text).line == 2


# ------------------------------------------------------------------------------------------------ nesting


@pytest.mark.parametrize("depth", [DEPTH + 1, 100, 600, 20_000])
@pytest.mark.parametrize(("open_", "leaf", "close"), [("[", "1", "]"), ("{a: ", "1", "}")])
def test_deep_flow_nesting_is_refused_not_a_recursion_error(depth, open_, leaf, close):
    text = "timeout_s: 1\nx: " + open_ * depth + leaf + close * depth + "\n"
    problem = refusal(text)
    assert problem.message == f"values nested more than {DEPTH} levels deep: refused"
    assert problem.line == 2


@pytest.mark.parametrize("depth", [DEPTH + 1, 200, 1000])
def test_deep_block_mappings_and_sequences_are_refused_on_the_line_that_goes_too_deep(depth):
    mapping = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf: 1\n"
    sequence = "".join("  " * i + "-\n" for i in range(depth)) + "  " * depth + "- 1\n"
    # The root is level 1. Line n opens the level-n mapping, whose key is a level n + 1 value; in the list, the
    # item on line n is itself at level n.
    for text, line in ((mapping, DEPTH), (sequence, DEPTH + 1)):
        problem = refusal(text)
        assert "levels deep" in problem.message
        assert problem.line == line


@pytest.mark.parametrize("depth", [5, DEPTH - 2])
def test_nesting_within_the_limit_is_read(depth):
    data, _ = config._parse("x: " + "[" * depth + "1" + "]" * depth + "\n", "t.yaml")
    inner = data["x"]
    for _ in range(depth - 1):
        inner = inner[0]
    assert inner == [1]


def test_aliases_cannot_stack_shallow_blocks_into_a_deep_one():
    # Each anchor is only 10 levels deep, but each nests the previous one: 20 of them expand to 200 levels.
    rows = ["b0: &b0 " + "[" * 10 + "1" + "]" * 10]
    rows += [f"b{i}: &b{i} " + "[" * 9 + f"*b{i - 1}" + "]" * 9 for i in range(1, 20)]
    text = "\n".join(rows) + "\n"
    problem = refusal(text)
    assert "nests values more than" in problem.message and problem.line <= 4


# --------------------------------------------------------------------------------------------- recursion


@pytest.mark.parametrize("text", [
    "x: &a [*a]\n",
    "x: &a [1, [2, [3, *a]]]\n",
    "x: &m {k: *m}\n",
    "x: &m\n  k:\n    - *m\n",
    "x: &m {<<: *m}\n",
    "x: &m {a: 1, nested: {<<: *m}}\n",
])
def test_recursive_aliases_are_refused(text):
    problem = refusal(text)
    assert "recursive alias" in problem.message and problem.line == text.count("\n", 0, text.index("*")) + 1


# ---------------------------------------------------------------------------------------------- merge keys


def test_merge_key_abuse_is_counted_like_any_alias():
    text = ("base: &base {" + ", ".join(f"k{i}: {i}" for i in range(200)) + "}\n"
            "hooks:\n" + "".join(f"  - <<: [*base, *base, *base]\n    name: h{i}\n" for i in range(20)))
    problem = refusal(text)
    assert "alias bomb" in problem.message and problem.line == first_line_over(text)


def test_a_merge_key_takes_only_mappings():
    with pytest.raises(config.ConfigError, match=r"t\.yaml:2: hooks\[0\]\.<<: a merge key \(<<\) takes a mapping"):
        config.loads("x: &x [1]\nhooks: [{<<: *x, type: command, name: a, command: [true]}]\n", "t.yaml")


# --------------------------------------------------------------------------------------------- legit use


LEGIT = """\
sources:
  ntp:
    - &ntp {host: 127.0.0.1, port: 11123}
    - {<<: *ntp, host: 127.0.0.2}
    - {<<: *ntp, host: 127.0.0.3, name: third}
  http: []
hooks:
  - &hook
    type: command
    name: first
    timeout_s: 30
    on: &alerts [rollback, rollback_while_down, offset_critical]
    command: [/bin/true]
  - <<: *hook
    name: second
    timeout_s: 5
    command: [/bin/true, second]
  - {type: command, name: third, on: *alerts, command: [/bin/true, third]}
"""


def test_anchors_aliases_and_merge_keys_in_a_real_config_keep_working():
    cfg = config.loads(LEGIT, "t.yaml")
    assert [(s.host, s.port) for s in cfg.sources.ntp] == [("127.0.0.1", 11123), ("127.0.0.2", 11123),
                                                          ("127.0.0.3", 11123)]
    assert cfg.sources.ntp[2].label == "third"
    assert [h.name for h in cfg.hooks] == ["first", "second", "third"]
    assert [h.on for h in cfg.hooks] == [("rollback", "rollback_while_down", "offset_critical")] * 3
    assert [h.timeout_s for h in cfg.hooks] == [30.0, 5.0, 10.0]  # written beats merged
    assert [h.options["command"] for h in cfg.hooks] == [["/bin/true"], ["/bin/true", "second"],
                                                         ["/bin/true", "third"]]
    _, lines = config._parse(LEGIT, "t.yaml")
    assert lines["hooks[1].timeout_s"] == 16 and lines["hooks[1].on"] == 12  # a merged key: where it is written
    assert lines["sources.ntp[1].port"] == 3


def test_an_error_inside_merged_content_names_the_line_it_was_written_on():
    text = ("defaults: &d {type: command, timeout_s: -1}\n"
            "hooks:\n"
            "  - {<<: *d, name: a, command: [/bin/true]}\n")
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "t.yaml")
    found = {p.path: p.line for p in info.value.problems}
    assert found["hooks[0].timeout_s"] == 1 and found["defaults"] == 1


def test_a_large_file_without_aliases_is_read_whatever_its_size():
    # What is written out costs in proportion to the file: only what aliases add is budgeted.
    text = "x: [" + ", ".join(str(i) for i in range(3 * LIMIT)) + "]\nx2: &a [1, 2]\ny: [*a, *a]\n"
    data, _ = config._parse(text, "t.yaml")
    assert len(data["x"]) == 3 * LIMIT and data["y"] == [[1, 2], [1, 2]]
