"""What every command of the command line shares: loading the configuration and the boot id. Below the commands
(main dispatches to them; status, events and hooks test use this), so no command imports another."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from timeguard.config import Config

EXIT_CONFIG_INVALID = 1


def load_config(explicit: str | None) -> Config:
    """For commands that do not use the hooks' secrets: one that exists only inside the service (a systemd
    credential, a variable its unit sets) is not an error here (timeguard.config.load, resolve_secrets)."""
    from timeguard import config
    from timeguard.hooks.registry import HOOK_TYPES

    return config.load(config.discover(explicit), resolve_secrets=False, hook_types=HOOK_TYPES)


def load_config_or_exit(explicit: str | None) -> Config:
    """For status/events: a bad configuration is reported with every error, exit 1."""
    from timeguard import config

    try:
        return load_config(explicit)
    except config.ConfigError as exc:
        print(f"timeguard: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_INVALID) from exc
