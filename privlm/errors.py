"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input (flags, files, config). Printed as one line; exit code 2."""


def cli(main):
    """Wrap an entry point so that a UserError becomes `error: <message>` and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
