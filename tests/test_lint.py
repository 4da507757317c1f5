"""The codebase stays ruff-clean: a lint failure fails the suite, not just a reviewer's eye."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.require import need

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    need(ruff, "ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
