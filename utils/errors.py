"""How a command ends when it cannot finish: one clear line on stderr instead of a traceback.

Exit status 2: bad input the user can fix (:class:`UserError`, as argparse's errors). 1: the run itself failed
(:class:`TrainingDiverged`, a full disk). 130: interrupted (Ctrl-C), as a shell reports SIGINT.
"""
from __future__ import annotations

import errno
import functools
import sys
from typing import Callable

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

_last_checkpoint: str | None = None


class UserError(Exception):
    """Bad input (file, flag, missing checkpoint): the message says what is wrong and what to do."""


class TrainingDiverged(Exception):
    """A loss, a logged statistic or the weights became NaN/inf, or every optimizer update was skipped: the
    message names the step and the value, and what to try. No final model is written."""


def note_checkpoint(where: str | None) -> None:
    """Where the run's last complete checkpoint is (and how to continue from it), for the line a failed or
    interrupted run ends with."""
    global _last_checkpoint
    _last_checkpoint = where


def _with_checkpoint(message: str) -> str:
    return f"{message}; the last good checkpoint: {_last_checkpoint}" if _last_checkpoint else message


def exits_cleanly_on_user_error(main: Callable[..., object]) -> Callable[..., int]:
    """Wrap a command's ``main`` so its known ways of failing print one ``error: …`` line (or ``interrupted; …``)
    and return the exit status of the module docstring."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        note_checkpoint(None)
        try:
            main(*args, **kwargs)
        except UserError as err:
            return _fail(f"error: {err}", 2)
        except TrainingDiverged as err:
            return _fail(f"error: {_with_checkpoint(str(err))}", 1)
        except KeyboardInterrupt:
            return _fail(_with_checkpoint("interrupted; stopped before the end (Ctrl-C)"), 130)
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            return _fail(_with_checkpoint(f"error: no space left on device writing {err.filename or 'the output'}; "
                                          "free space or choose another --output_dir"), 1)
        return 0
    return wrapper


def _fail(line: str, status: int) -> int:
    print(line, file=sys.stderr, flush=True)
    return status
