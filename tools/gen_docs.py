#!/usr/bin/env python3
"""Regenerate the man page and the shell completions from timeguard's argparse tree.

    .venv/bin/python tools/gen_docs.py          # docs/man/timeguard.1, contrib/completion/{timeguard.bash,_timeguard}
    .venv/bin/python tools/gen_docs.py --check  # exit 1 and name the files that differ (the tests do the same)

Run it after changing a command, an option or a help text in timeguard/cli/main.py or timeguard/cli/repair.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timeguard.cli.docs import OUTPUTS  # noqa: E402
from timeguard.cli.main import build_parser  # noqa: E402 - after the path is set


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if any file differs")
    args = ap.parse_args()
    parser = build_parser()
    stale = []
    for relative, generate in OUTPUTS.items():
        path = ROOT / relative
        text = generate(parser)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"out of date (run tools/gen_docs.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    for relative in stale:
        print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
