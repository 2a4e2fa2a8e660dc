"""Command line entry point (placeholder until the CLI lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the `switchboard` command."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        print("switchboard 0.1.0")
    return 0
