"""The base class of the project's domain errors.

Every error that a user can fix (a missing or corrupt file, a wrong option, an absent model weight)
derives from :class:`InputError`; its message names the file or flag and says what to do. The scripts
catch this one class and print the message on one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn


class InputError(RuntimeError):
    """A problem with the user's input or environment; the message says what to change."""


class NonFiniteError(InputError):
    """A loss, a parameter or a model that holds NaN or infinity; the message names where."""


def one_line(exc: BaseException) -> str:
    """The message of a domain error, or of an ``OSError`` with the file it concerns (a full disk, a
    folder that cannot be written), on one line."""
    if isinstance(exc, OSError) and not isinstance(exc, InputError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        text = f"{exc.strerror or exc} ({where})" if where else str(exc)
        return f"{text}; free space or fix the folder's permissions, then run again"
    return " ".join(str(exc).split())


def guarded(script: str, fn: Callable[[], int]) -> int:
    """Run a script's body; a domain error or an ``OSError`` becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except (InputError, OSError) as exc:
        print(f"{script}: {one_line(exc)}", file=sys.stderr)
        return 2


def exit_without_teardown(code: int) -> NoReturn:
    """End a script that has written and closed everything (checkpoints, logs, tensorboard, image
    workers) with ``code``, skipping the interpreter's teardown: freeing torch's modules, CUDA graphs and the
    CUDA context one object at a time takes 0.8 s on a CPU machine (bench/bench_startup.py) and more on a
    GPU, while the operating system reclaims it all at once. Only for a script's ``__main__``, after its
    ``main()`` returned; an exception still ends the normal way, with its traceback."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
