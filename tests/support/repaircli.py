"""``timeguard repair …`` run as its own process, as a user runs it from a shell: at real time (no libfaketime
inherited), without CAP_SYS_TIME, stopped by PID; its exit code, output and when it ran."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.realprogs import ManagedProcess

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 90.0


@dataclasses.dataclass
class CliRun:
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    started: float  # monotonic
    ended: float

    def json(self) -> dict[str, Any]:
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"not JSON from {' '.join(self.args)} (rc {self.rc}):\n{self.stdout}\n"
                                 f"{self.stderr}") from None

    def __str__(self) -> str:
        return f"timeguard repair {' '.join(self.args)} -> {self.rc}\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


@dataclasses.dataclass
class Cli:
    args: tuple[str, ...]
    proc: ManagedProcess
    started: float

    def finish(self, timeout_s: float = CLI_TIMEOUT_S) -> CliRun:
        try:
            out, err = self.proc.popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.stop()
            raise AssertionError(f"timeguard repair {' '.join(self.args)} still running after {timeout_s} s") from None
        finally:
            self.proc.stop()
        rc = self.proc.popen.returncode
        assert rc is not None
        return CliRun(self.args, rc, out, err, self.started, time.monotonic())


def start_cli(config: Path, *args: str) -> Cli:
    """``python -m timeguard repair ARGS --config CONFIG`` at real time (setpriv without CAP_SYS_TIME)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))
           and k not in ("TIMEGUARD_CONFIG", "TIMEGUARD_BEAT_DATABASE_URL")}
    argv = (*args, "--config", str(config))
    started = time.monotonic()
    proc = ManagedProcess.start([sys.executable, "-m", "timeguard", "repair", *argv], name="timeguard-repair",
                                env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Cli(argv, proc, started)


def run_cli(config: Path, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> CliRun:
    return start_cli(config, *args).finish(timeout_s)


