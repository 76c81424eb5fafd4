"""The base class of the project's domain errors.

Every error that a user can fix (a missing or corrupt file, a wrong option, an absent model weight)
derives from :class:`InputError`; its message names the file or flag and says what to do. The scripts
catch this one class and print the message on one line (exit 2) instead of a traceback.
"""

from __future__ import annotations


class InputError(RuntimeError):
    """A problem with the user's input or environment; the message says what to change."""
