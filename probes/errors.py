"""One error policy for every command (experiment scripts, ``python -m probes.zoo``, ``python -m probes.data``,
``python -m analysis.*``, ``partprobe COMMAND``).

The suite's own errors say what is wrong with the user's input (an option value, a dataset file, a
checkpoint, a record) and derive from ``UserError``. A command ends on one with a single
``<prog>: error: <message>`` line on stderr and exit status 2; ``--debug`` or ``PARTPROBE_DEBUG=1`` shows the
traceback instead. Any other exception is a bug of the suite (or of a library) and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Sequence

DEBUG_ENV = "PARTPROBE_DEBUG"
BAD_INPUT = 2          # exit status of a suite error (argparse uses 2 for usage errors as well)


class UserError(Exception):
    """Bad input the user can fix; the message names the file or option and what was expected."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(err: BaseException, prog: str) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return BAD_INPUT


@contextlib.contextmanager
def error_policy(debug: bool = False, prog: str = "partprobe"):
    """Suite errors end the program with ``<prog>: error: <message>`` and exit status 2 (``debug``: the
    traceback); any other exception keeps its traceback."""
    try:
        yield
    except UserError as err:
        if debug:
            raise
        raise SystemExit(report(err, prog)) from None


def run_main(main: Callable, argv: Sequence[str] | None = None, prog: str = "partprobe") -> int:
    """``main(argv)`` of a command under the policy, as an exit status. ``--debug`` is taken out of ``argv``
    here, so a command's own parser need not declare it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if debug:       # for a command that reads the policy again itself (an experiment's entry point)
        os.environ[DEBUG_ENV] = "1"
    try:
        result = main([a for a in argv if a != "--debug"])
    except UserError as err:
        if debug:
            raise
        return report(err, prog)
    return result if isinstance(result, int) else 0
