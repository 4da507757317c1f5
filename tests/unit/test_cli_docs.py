"""The command line as people meet it: every command described in --help, a closed pipe ends quietly, and the man
page and the bash/zsh completions are generated from the argparse tree, committed as generated, and work in the
real programs (man, bash, zsh)."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.require import need_program
from timeguard.cli.docs import OUTPUTS, Command, commands, takes_value, wants_file
from timeguard.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
TREE = list(commands(build_parser()))
BASH_COMPLETION = ROOT / "contrib/completion/timeguard.bash"
ZSH_COMPLETION_DIR = ROOT / "contrib/completion"
MAN_PAGE = ROOT / "docs/man/timeguard.1"


def _words(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------- descriptions


@pytest.mark.parametrize("cmd", TREE[1:], ids=lambda c: c.name)
def test_every_command_has_a_description_in_its_help(cmd: Command, capsys):
    assert cmd.parser.description, f"{cmd.name}: no description= (only a help line)"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*cmd.path, "--help"])
    assert exit_.value.code == 0
    assert _words(cmd.parser.description) in _words(capsys.readouterr().out)


# --------------------------------------------------------------------------------------------- closed pipes


def _with_closed_stdout(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run timeguard with its stdout a pipe whose reader is already gone: every write gets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "timeguard", *args], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=tmp_path, env={**os.environ, "TIMEGUARD_CONFIG": ""}, timeout=60, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["config", "generate"], ["config", "schema"], ["config", "show"],
                                  ["config", "show", "--json"],
                                  ["hooks", "list"], ["--help"], ["repair", "undo", "--help"]],
                         ids=" ".join)
def test_a_closed_pipe_ends_quietly_with_141(args, tmp_path):
    result = _with_closed_stdout(args, tmp_path)
    assert result.stderr == b""  # no traceback, no "Exception ignored ... BrokenPipeError"
    # argparse's --help swallows the write error itself and exits 0; every command's own output ends with 141
    assert result.returncode == (0 if "--help" in args else 141)


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(tmp_path):
    """EPIPE from a socket (a receiver, a database) deep in a command is an error with its traceback, not exit 141:
    only a stdout nobody reads any more ends quietly."""
    script = ("import socket\n"
              "import timeguard.cli.main as cli\n"
              "def command(argv):\n"
              "    print('partial output')\n"
              "    a, b = socket.socketpair()\n"
              "    b.close()\n"
              "    a.sendall(b'x' * 100_000)  # the peer is gone: BrokenPipeError\n"
              "cli._main = command\n"
              "raise SystemExit(cli.main([]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=60, check=False)
    assert result.returncode == 1 and "BrokenPipeError" in result.stderr and "in command" in result.stderr
    assert result.stdout == "partial output\n"


def test_piped_to_head_in_a_real_shell(tmp_path):
    """`timeguard config generate | head -1` under pipefail: the first line, nothing on stderr, 0 or 141 (the
    output may fit in the pipe before head exits)."""
    python = shlex.quote(sys.executable)
    script = f"set -o pipefail; {python} -m timeguard config generate 2>err | head -1; echo \"exit=$?\""
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False, env={**os.environ, "TIMEGUARD_CONFIG": ""})
    first, status = result.stdout.splitlines()
    assert first.startswith("# timeguard configuration")
    assert status in ("exit=0", "exit=141")
    assert (tmp_path / "err").read_text() == ""


# ----------------------------------------------------------------------------------------- generated files


@pytest.mark.parametrize("relative", sorted(OUTPUTS))
def test_committed_file_is_what_the_parser_generates(relative):
    committed = (ROOT / relative).read_text()
    assert committed == OUTPUTS[relative](build_parser()), f"{relative} is out of date: run tools/gen_docs.py"


def test_gen_docs_check_mode_agrees():
    result = subprocess.run([sys.executable, str(ROOT / "tools/gen_docs.py"), "--check"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------- man page


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_man_renders_every_command_and_option_without_a_warning(locale):
    man = need_program("man", "man-db")
    result = subprocess.run([man, "--warnings", "-l", str(MAN_PAGE)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LC_ALL": locale, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": ""},
                            check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    page = result.stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert re.search(rf"^{heading}$", page, re.M), heading
    for cmd in TREE[1:]:
        assert re.search(rf"^ +{re.escape(cmd.name)}$", page, re.M), cmd.name
        for action in cmd.options:
            for flag in action.option_strings:
                assert re.search(rf"(^|[ ,\[]){re.escape(flag)}([ ,\]]|$)", page, re.M), f"{cmd.name} {flag}"


def test_whatis_reads_the_name_section():
    lexgrog = need_program("lexgrog", "man-db")
    result = subprocess.run([lexgrog, str(MAN_PAGE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and '"timeguard - host time-integrity agent' in result.stdout, result.stdout


# ------------------------------------------------------------------------------------------- bash completion


def _bash_complete(lines: list[str], cwd: Path) -> list[list[str]]:
    """Complete each command line (the cursor at its end) in one real bash that sourced the completion."""
    script = [
        "set -u",
        f"source {shlex.quote(str(BASH_COMPLETION))}",
        "complete -p timeguard",
        'c() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _timeguard; echo "${COMPREPLY[*]}"; }',
    ]
    for line in lines:
        words = line.split(" ")
        script.append("c " + " ".join(shlex.quote(w) for w in words))
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)], cwd=cwd, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    registered, *answers = result.stdout.split("\n")[: len(lines) + 1]
    assert registered == "complete -F _timeguard timeguard"
    return [sorted(answer.split()) for answer in answers]


def test_bash_syntax():
    result = subprocess.run(["bash", "-n", str(BASH_COMPLETION)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_bash_completes_every_command_its_subcommands_options_and_files(tmp_path):
    """For every node of the argparse tree: its subcommands, exactly its options, files for --config and FILE
    arguments, nothing for other values, and a value that looks like a command is not taken for one."""
    (tmp_path / "site.yaml").write_text("")
    cases: list[tuple[str, list[str]]] = []
    for cmd in TREE:
        prefix = " ".join(("timeguard", *cmd.path, ""))
        subs = sorted(name for name, _ in cmd.subcommands)
        files = ["site.yaml"] if any(wants_file(a) for a in cmd.positionals) else []
        cases.append((prefix, subs or files))
        cases.append((prefix + "-", sorted(f for a in cmd.options for f in a.option_strings)))
        for action in cmd.options:
            if takes_value(action):
                flag = action.option_strings[-1]
                cases.append((f"{prefix}{flag} ", ["site.yaml"] if wants_file(action) else []))
    cases.append(("timeguard events --kind config --li", ["--limit"]))  # "config" is --kind's value here
    cases.append(("timeguard check --config check --js", ["--json"]))
    cases.append(("timeguard c", ["check", "config"]))
    cases.append(("timeguard config s", ["schema", "show"]))
    cases.append(("timeguard config sh", ["show"]))
    got = _bash_complete([line for line, _ in cases], tmp_path)
    assert {line: answer for (line, _), answer in zip(cases, got, strict=True)} == dict(cases)


# -------------------------------------------------------------------------------------------- zsh completion


def test_zsh_syntax():
    zsh = need_program("zsh", "zsh")
    result = subprocess.run([zsh, "-n", str(ZSH_COMPLETION_DIR / "_timeguard")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


class _Zsh:
    """An interactive zsh on a pseudo-terminal with compinit and our completion in $fpath: TAB really pressed."""

    def __init__(self, zsh: str, cwd: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: nothing but exec
            os.chdir(cwd)
            os.execve(zsh, [zsh, "-f", "-i"], {"TERM": "dumb", "HOME": str(cwd), "PATH": os.environ["PATH"]})  # noqa: S606
        self.send(f"fpath=({ZSH_COMPLETION_DIR} $fpath); autoload -U compinit; compinit -u -D; setopt nobeep; "
                  "zstyle ':completion:*' list-prompt ''; PS1='rea''dy> '\n")  # typed differs from printed
        self.cases, self.pending = 0, ""
        self.read_until("ready> ")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, marker: str, timeout: float = 20.0) -> str:
        """What zsh wrote up to and including ``marker``; anything after it is kept for the next read."""
        deadline = time.monotonic() + timeout
        while marker not in self.pending:
            assert time.monotonic() < deadline, f"zsh did not answer {marker!r}: {self.pending!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                self.pending += os.read(self.fd, 65536).decode(errors="replace")
        out, _, self.pending = self.pending.partition(marker)
        return out + marker

    def complete(self, line: str) -> str:
        """Type ``line``, press TAB, and return what zsh drew. zsh handles keys in order, so a command typed after
        the TAB prints its marker only once the completion is done; the typed text differs from the printed one."""
        self.cases += 1
        self.send(f"\x15{line}\t\x15print DONE-${{:-{self.cases}}}\n")
        drawn = self.read_until(f"DONE-{self.cases}\r\n")
        self.read_until("ready> ")  # the line editor is back: keys typed before would reach the tty's cooked mode
        return drawn

    def close(self) -> None:
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_zsh_completes_commands_options_and_files_on_a_real_terminal(tmp_path):
    zsh = need_program("zsh", "zsh")
    (tmp_path / "site.yaml").write_text("")
    shell = _Zsh(zsh, tmp_path)
    try:
        listing = shell.complete("timeguard ")
        for name, help_line in TREE[0].subcommands:
            assert re.search(rf"{name} +-- {re.escape(help_line[:20])}", listing), (name, listing)
        listing = shell.complete("timeguard config ")
        assert all(name in listing for name in ("validate", "show", "generate")), listing
        assert "timeguard check --nagios" in shell.complete("timeguard check --na")  # unique: inserted
        listed = re.findall(r"^(--?[\w-]+) +-- ", shell.complete("timeguard hooks test --event rollback --"), re.M)
        assert sorted(listed) == ["--config", "--dry-run", "--help", "--json"]  # --event is given already
        assert "site.yaml" in shell.complete("timeguard config validate si")
    finally:
        shell.close()
