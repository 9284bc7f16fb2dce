"""Command line: ``python -m chords_core demo [...]`` and ``python -m chords_core optimize [...]``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "demo"
    if command == "demo":
        from .demo import main as demo

        return demo(argv)
    if command == "optimize":
        from .initopt import cli

        return cli(argv)
    print(f"unknown command {command!r}; use 'demo' or 'optimize' (with --help for options)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
