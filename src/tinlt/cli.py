"""The ``tinlt`` command: builds the parser from the command modules (tinlt.commands, one
per command) and runs the chosen one, turning user errors into one line.

Every subcommand is a thin shell over a function that is equally usable from Python.
User errors print as one line and exit with status 2: ``TinltError`` (bad input, config,
file) and ``OSError`` (what the operating system says about the user's files and disks:
no space, permission, read-only, missing). Any other exception is a bug in tinlt and keeps
its traceback. A run stopped by SIGINT/SIGTERM saves a resumable checkpoint and exits with
128 + the signal number.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .errors import Interrupted, TinltError


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .commands import register_all

    ap = argparse.ArgumentParser(prog="tinlt", description="TIN: long-tailed recognition with vision-language models")
    ap.add_argument("--version", action="version", version=f"tinlt {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    COMMANDS.clear()
    COMMANDS.update(register_all(sub))
    return ap


COMMANDS: dict = {}  # command -> handler, filled from tinlt.commands when the parser is built


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .runtime import tune_allocator

    tune_allocator()
    args = build_parser().parse_args(argv)
    trust = getattr(args, "trust_checkpoint", False)
    try:
        if trust:
            from .engine.checkpoint import trust_pickled_checkpoints

            trust_pickled_checkpoints(True)
        handler = COMMANDS[args.cmd]
        return handler(args)
    except TinltError as e:
        print(f"tinlt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tinlt models | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush does not fail again
        return 0
    except OSError as e:  # the user's files and disks; a bug would be another exception type
        where = f"{e.filename}: " if e.filename else ""
        print(f"tinlt: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinlt: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        from .engine.resume import resume_command

        if (hint := resume_command(e.path)) is not None:  # under torchrun: rank 0 says it, once
            print(f"tinlt: {e}; continue with: {hint}", file=sys.stderr)
        return 128 + e.signum
    finally:
        if "tinlt.engine.progress" in sys.modules:  # -q is for this command only
            sys.modules["tinlt.engine.progress"].hide_bars(False)
        if trust:  # for this command only
            from .engine.checkpoint import trust_pickled_checkpoints

            trust_pickled_checkpoints(False)

if __name__ == "__main__":
    raise SystemExit(main())
