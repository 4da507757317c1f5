"""SIGHUP's reload: the new configuration read, validated and prepared by a worker thread, with a deadline.

A file may fail in any way (bad YAML, a YAML bomb, deep nesting, unreadable, a FIFO that never opens, a bug in a
validator) or take long; detection never waits for it. The daemon's loop calls :meth:`Reloader.progress` each
tick, which applies the result, or refuses it after RELOAD_TIMEOUT_S; the old configuration stays in force until then. A
worker stuck past its deadline is abandoned (its late result is never applied); after MAX_STUCK_RELOADS of them a
SIGHUP is refused at once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timeguard import config as config_mod
from timeguard.config import Config
from timeguard.hooks.registry import HOOK_TYPES

RELOAD_TIMEOUT_S = 10.0  # a SIGHUP's new configuration not read and validated by then is refused
MAX_STUCK_RELOADS = 2  # reload threads still stuck past their deadline (a FIFO, a hung NFS) before SIGHUP is refused


@dataclasses.dataclass(slots=True)
class Prepared:
    """A new configuration, valid, with what the daemon needs to switch to it (``prepare``'s result)."""

    cfg: Config
    parts: Any


@dataclasses.dataclass(slots=True)
class Refused:
    errors: list[str]
    status: str  # for systemd's status line


@dataclasses.dataclass(slots=True)
class _Job:
    started_s: float  # monotonic
    worker: threading.Thread | None = None
    result: Prepared | Refused | None = None  # set last by the worker


class Reloader:
    """``prepare(cfg)`` makes what the daemon needs from a new configuration (sources, hooks); it runs in the
    worker, so it may fail or take long, and must not change the running daemon."""

    def __init__(self, config_path: Path | None, *, prepare: Callable[[Config], Any],
                 apply: Callable[[Prepared], None], refuse: Callable[[Refused], None]) -> None:
        self.config_path = config_path
        self._prepare, self._apply, self._refuse = prepare, apply, refuse
        self.job: _Job | None = None
        self.stuck: list[threading.Thread] = []

    def start(self) -> None:
        """Start reading the file in a worker; refused at once while too many earlier ones are stuck."""
        self.stuck = [t for t in self.stuck if t.is_alive()]
        if len(self.stuck) >= MAX_STUCK_RELOADS:
            self._refuse(Refused([f"{len(self.stuck)} earlier reloads are still stuck reading {self.config_path}: "
                                  "restart the daemon to read it again"], "reload refused"))
            return
        job = _Job(started_s=time.monotonic())
        job.worker = threading.Thread(target=self._work, args=(job,), name="reload", daemon=True)
        self.job = job
        job.worker.start()

    def _work(self, job: _Job) -> None:
        origin = str(self.config_path) if self.config_path is not None else "<embedded defaults>"
        errors = ["unknown error"]
        try:
            cfg = config_mod.load(self.config_path, hook_types=HOOK_TYPES)
            job.result = Prepared(cfg, self._prepare(cfg))
            return
        except config_mod.ConfigError as exc:
            errors = [p.format(exc.origin) for p in exc.problems]
        except RecursionError:
            errors = [f"{origin}: nested too deeply to be read"]
        except MemoryError:
            errors = [f"{origin}: too large to be read (out of memory)"]
        except Exception as exc:  # noqa: BLE001 - whatever fails, the reload is refused and the old config kept
            errors = [f"{origin}: {type(exc).__name__}: {exc}"]
        finally:
            if job.result is None:
                job.result = Refused(errors, "reload refused: invalid configuration")

    def progress(self) -> None:
        """Called each tick of the loop: once the worker is done, apply or refuse its result (the reload is then
        over); refuse it once past its deadline."""
        job = self.job
        if job is None:
            return
        if job.result is not None:
            self.job = None
            if isinstance(job.result, Refused):
                self._refuse(job.result)
            else:
                self._apply(job.result)
            return
        waited = time.monotonic() - job.started_s
        if waited <= RELOAD_TIMEOUT_S:
            return
        self.job = None  # abandoned: its result, if it ever comes, is never applied
        if job.worker is not None:
            self.stuck.append(job.worker)
        self._refuse(Refused([f"{self.config_path}: not read and validated after {waited:.0f} s "
                              f"(limit {RELOAD_TIMEOUT_S:.0f} s)"], "reload refused: timed out"))
