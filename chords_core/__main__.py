"""Command line: ``python -m chords_core {demo,optimize} [...]`` (also the ``chords`` console script).

- ``demo``: CHORDS against the sequential solver on an analytic Gaussian mixture (the default
  subcommand when none is given);
- ``optimize``: choose a CHORDS init sequence on a Gaussian-mixture calibration problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

SUBCOMMANDS = ("demo", "optimize")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per subcommand.

    Returns:
        The parser of ``python -m chords_core``.
    """
    from . import __version__, demo

    p = argparse.ArgumentParser(prog=_prog(),
                                description="chords: parallel ODE solving for diffusion sampling.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{demo,optimize}")
    demo.add_arguments(sub.add_parser("demo", help="CHORDS vs the sequential solver on a Gaussian mixture (default)",
                                      description=(demo.__doc__ or "").splitlines()[0]))
    add_optimize_arguments(sub.add_parser(
        "optimize", help="find a CHORDS init sequence within an error budget",
        description="Find the CHORDS init sequence with the fewest rounds whose output stays within an error budget "
                    "relative to the sequential solver."))
    return p


def _prog() -> str:
    """The program's name in messages: ``chords`` for the console script (it said python -m chords_core)."""
    return "chords" if os.path.basename(sys.argv[0]) == "chords" else "python -m chords_core"


def add_optimize_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``optimize`` subcommand's options to ``p``.

    Args:
        p: the subparser to extend.
    """
    from .demo import MAX_CLI_STEPS, int_at_least
    from .solvers import SOLVERS

    # (a user trial: --budget 0.5, --solver nope and --cores above --steps were named as the library's
    # arguments, budget, solver, cores, not as the options)
    p.add_argument("--steps", type=int_at_least(1, MAX_CLI_STEPS), default=50,
                   help=f"grid steps T, at most {MAX_CLI_STEPS} (default 50)")
    p.add_argument("--cores", type=int_at_least(1), default=4, help="cores K, at most --steps (default 4)")
    p.add_argument("--solver", default="euler", choices=sorted(SOLVERS), help="solver name (default euler)")
    p.add_argument("--budget", type=_budget, default=1.05, help="allowed error / sequential error, >= 1 (default 1.05)")
    p.add_argument("--dim", type=int_at_least(1), default=8, help="Gaussian mixture dimension (default 8)")
    p.add_argument("--modes", type=int_at_least(1), default=3, help="Gaussian mixture components (default 3)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the mixture and the inputs (default 0)")
    p.add_argument("--samples", type=int_at_least(1), default=16, help="calibration samples (default 16)")
    p.add_argument("--max-evals", type=int_at_least(0), default=600,
                   help="local search stops at this many sequences measured in all; the seeds, about one a step "
                        "(each a full CHORDS run on the calibration samples), are measured first whatever it says, "
                        "and an exhaustive search (up to --exhaustive-limit sequences) ignores it (default 600)")
    p.add_argument("--exhaustive-limit", type=int_at_least(0), default=500,
                   help="search exhaustively up to this many sequences (default 500)")
    p.add_argument("--progress", action="store_true",
                   help="show a bar over the sequences measured, with the time left (needs tqdm; each sequence is "
                        "a CHORDS run: at --steps 2000 --cores 8 the seeds alone take about 40 minutes)")


def _budget(text: str) -> float:
    """An argparse ``type`` for ``--budget``: the library's own check (``tuning.check_budget``), its
    refusal worded for the option."""
    from .tuning.calibration import check_budget

    try:
        return check_budget(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (an error relative to the sequential "
                                         f"solver's), got {text!r}") from None


def optimize(args: argparse.Namespace) -> int:
    """Run ``optimize_init`` with the parsed options and print its summary.

    Args:
        args: the parsed ``optimize`` options.

    Returns:
        The exit status (0).
    """
    from .tuning import optimize_init

    if args.cores > args.steps:
        raise ValueError(f"--cores: at most --steps ({args.steps}), got {args.cores}")
    if args.progress:  # (before the calibration's runs, naming the option: a review found a late traceback)
        from .progress import check_progress

        try:
            check_progress(True)
        except ImportError as err:
            raise ValueError(f"--progress: {err}".replace(", or pass progress=False", ", or leave out --progress")) \
                from None
    try:
        res = optimize_init(args.steps, args.cores, args.solver, budget=args.budget, dim=args.dim, modes=args.modes,
                            seed=args.seed, samples=args.samples, max_evals=args.max_evals,
                            exhaustive_limit=args.exhaustive_limit, progress=args.progress)
    except KeyboardInterrupt as interrupt:  # a Ctrl-C during the search: its best so far, then "interrupted"
        partial = getattr(interrupt, "best_so_far", None)
        if partial is not None:
            try:
                print(partial.summary(), flush=True)
            except OSError:  # (a reader gone with the same Ctrl-C, `| tee`, or a full disk: the interrupt stays
                # the outcome, as before the summary was printed)
                _stdout_to_devnull()
        raise
    print(res.summary())
    return 0


class _OutputError(OSError):
    """A write to stdout that failed (``_Stdout``), told apart from the subcommand's other ``OSError``."""


class _Stdout:
    """stdout while a subcommand runs: its writes' ``OSError`` (a full disk, ``> /dev/full``) raised as
    ``_OutputError``; everything else as the stream's."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    @staticmethod
    def _guarded(call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:  # (the reader left: ``main``'s own handler)
            raise
        except OSError as e:
            raise _OutputError(e.errno, e.strerror) from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, once writing to it has failed, so that the interpreter's final flush
    raises nothing more."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns the exit status.

    Bad values exit with status 2 and a usage error, as argparse does (an unknown option in the
    subcommand's own usage); Ctrl-C exits with 130 (the shell's status for SIGINT) and one line,
    without a traceback, from the moment ``main`` runs (the subcommand's imports included; a Ctrl-C
    while Python imports the package itself, before it, is Python's traceback); running out of
    memory, or an output that cannot be written (a full disk), exits with 1 and one line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # (named before anything is built: a Ctrl-C while the parser imports the demo named "python -m chords_core
    # demo" for `chords optimize`, a review; usage: the parser whose usage an error prints)
    prog, command, usage = _prog(), argv[0] if argv and argv[0] in SUBCOMMANDS else "demo", None
    try:
        parser = build_parser()
        prog = parser.prog
        if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
            parser.print_usage(sys.stderr)  # (as argparse's own errors do)
            print(f"{prog}: error: unknown command {argv[0]!r}; use one of {', '.join(SUBCOMMANDS)} "
                  "(--help lists them)", file=sys.stderr)
            return 2
        if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help", "--version"):
            argv = ["demo"] + argv  # the demo is the default subcommand
        args, extra = parser.parse_known_args(argv)
        command = args.command
        usage = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr,index]
        if extra:  # (argparse reported them in the top-level usage, naming no subcommand)
            usage.error(f"unrecognized arguments: {' '.join(extra)}")
        from . import demo

        stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
        try:
            status = demo.run_main(args) if command == "demo" else optimize(args)
            sys.stdout.flush()  # (a failed write surfaces here, inside the handlers below)
        finally:
            sys.stdout = stdout
        return status
    except KeyboardInterrupt:  # Ctrl-C: a line and the shell's status for SIGINT, not a traceback
        print(f"{prog} {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`chords demo | head -1`): quiet, as other tools
        _stdout_to_devnull()
        return 141
    except MemoryError as e:  # sizes argparse accepts but memory does not (--samples 100000000000)
        print(f"{prog} {command}: out of memory ({e or 'MemoryError'}): give smaller --steps, --samples, --dim or "
              "--modes", file=sys.stderr)
        return 1
    except _OutputError as e:  # writing the output failed otherwise (a full disk, `> /dev/full`: it was a
        # traceback; any other OSError keeps its own, and stdout stays where it was, a review)
        _stdout_to_devnull()
        print(f"{prog} {command}: could not write the output ({e})", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:  # a value argparse could not check alone: usage error, status 2
        if usage is not None:
            usage.print_usage(sys.stderr)
        print(f"{prog} {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
