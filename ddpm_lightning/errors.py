"""User errors through Hydra: `instantiate` wraps whatever a constructor raises in an
`InstantiationException` (twice when one config builds another). A user error deserves its own
one-line message, so the root ValueError / FileNotFoundError is re-raised as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hydra.errors import InstantiationException

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
        if isinstance(root, USER_ERRORS) and not isinstance(root, InstantiationException):
            raise root from None
        raise
