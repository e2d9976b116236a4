"""Errors the user can fix, and the guard that turns them into one clear line instead of a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """Bad input (file, flag, missing checkpoint): the message says what is wrong and what to do."""


def exits_cleanly_on_user_error(main: Callable[..., object]) -> Callable[..., int]:
    """Wrap a step's ``main`` so a :class:`UserError` prints ``error: …`` and exits with status 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2
        return 0
    return wrapper
