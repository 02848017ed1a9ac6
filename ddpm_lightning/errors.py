"""User errors: a ValueError / FileNotFoundError a user caused, reported as one line.

Through Hydra, `instantiate` wraps whatever a constructor raises in an `InstantiationException`
(twice when one config builds another), so `user_errors` re-raises the root error as it was;
`one_line_errors` turns it into `error: ...` and exit code 2 at a command line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

USER_ERRORS = (ValueError, FileNotFoundError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise the user error at the root of an `InstantiationException` chain."""
    try:
        yield
    except InstantiationException as err:
        root: BaseException = err
        while root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, (*USER_ERRORS, MissingMandatoryValue)) and not isinstance(root, InstantiationException):
            raise root from None
        raise


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """For command-line entry points: a user error ends the process with one line
    `error: ...` on stderr and exit code 2, no traceback."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except MissingMandatoryValue as err:  # a config value marked ??? (e.g. data=folder's data.root)
        key = err.full_key or err.key
        print(f"error: {key} is required here and has no value: give {key}=... on the command line", file=sys.stderr)
        raise SystemExit(2) from None
