"""Scratch space: one world-traversable base per test session.

A daemon that drops privileges (_chrony, nginx's ``nobody`` worker) must still read the libfaketime rc file;
pytest's 0700 ``tmp_path`` would make it silently tell real time, so every directory here is created 0755 under a
base that other users can reach.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def others_can_reach(path: Path) -> str | None:
    """None if every ancestor of ``path`` is o+x (a dropped-privilege daemon can get there), else the blocker."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return str(parent)
    return None



_scratch_base: Path | None = None


def scratch_dir(prefix: str) -> Path:
    """A fresh 0755 directory that daemons running as _chrony or nobody can enter.

    pytest's ``tmp_path`` lives under a 0700 ``/tmp/pytest-of-<user>``, which would make a faked daemon
    silently read real time (it can't open the rc file), so everything lives under our own base instead.
    The base is removed at interpreter exit (and by the session fixture).
    """
    global _scratch_base
    if _scratch_base is None or not _scratch_base.is_dir():
        base = Path(tempfile.mkdtemp(prefix="timeguard-real-"))
        base.chmod(0o755)
        blocker = others_can_reach(base)
        if blocker is not None:
            shutil.rmtree(base, ignore_errors=True)
            base = Path(tempfile.mkdtemp(prefix="timeguard-real-", dir="/tmp"))
            base.chmod(0o755)
        _scratch_base = base
        atexit.register(shutil.rmtree, base, True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=_scratch_base))
    path.chmod(0o755)
    return path


def remove_scratch() -> None:
    """Remove the session's scratch base (call only after every process using it has stopped)."""
    global _scratch_base
    if _scratch_base is not None:
        shutil.rmtree(_scratch_base, ignore_errors=True)
        _scratch_base = None


def build_c(source: str, dest_dir: Path, name: str, gcc_args: Sequence[str]) -> Path:
    """Compile C ``source`` into ``dest_dir/name`` (reused while the source kept beside it is unchanged)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    src, out = dest_dir / f"{Path(name).stem}.c", dest_dir / name
    if out.exists() and src.exists() and src.read_text() == source:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError(f"gcc is needed to build {name} (apt-get install gcc libc6-dev)")
    src.write_text(source)
    # Build under a unique name and rename: a concurrent session may be using the old file.
    tmp = dest_dir / f".{name}.{os.getpid()}.tmp"
    proc = subprocess.run([gcc, "-o", str(tmp), str(src), *gcc_args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building {name} failed:\n{proc.stderr}")
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return out
