"""The daemon's NTS keys across restarts (measure/nts/keep.py): read at start, written at stop.

Like chrony's ``ntsdumpdir``: a restart costs no key exchange with each NTS server. A configuration without NTS
sources removes the file of an earlier one — keys no source uses are not kept. The NTS package is imported inside
each function: a daemon without NTS sources never loads it (tests/integration/test_source_imports.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from timeguard.config import Config
from timeguard.measure.check import nts_sessions


def _path(cfg: Config) -> Path:
    from timeguard.measure.nts.keep import FILENAME

    return Path(cfg.state_dir) / FILENAME


def restore(cfg: Config, log: Any) -> None:
    """Give the NTS sessions of the probes just made the keys and cookies of the last run."""
    if not cfg.sources.nts:
        return
    from timeguard.measure.nts import keep

    path = _path(cfg)
    restored, problems = keep.load(path, nts_sessions())
    for problem in problems:
        log.warning("nts_keys_ignored", problem=problem, note="a new key exchange instead; nothing else is lost")
    if restored:
        log.info("nts_keys_restored", sources=restored, path=str(path))


def keep(cfg: Config, log: Any) -> None:
    """At stop: the NTS sessions' keys and unspent cookies, for the next start."""
    path = _path(cfg)
    if not cfg.sources.nts:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return
    from timeguard.measure.nts import keep as kept_keys

    try:
        count = kept_keys.save(path, nts_sessions())
    except kept_keys.KeepError as exc:
        log.error("nts_keys_not_kept", error=str(exc), note="the next start makes a key exchange with each server")
        return
    log.info("nts_keys_kept", sources=count, path=str(path))
