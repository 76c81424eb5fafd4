"""One writer per run folder: ``train.py`` takes a lock file in ``<run>/`` before it writes anything.

The lock (``<run>/.lock``) holds the owner's process id and host name. A second ``train.py`` into the same
folder is refused with a message naming the owner; a lock left by a process that no longer runs (kill -9)
is taken over. While it holds the lock, the owner removes the temporary files that atomic writes of an
earlier, killed run left behind (``.<name>.*.tmp``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from utils.errors import InputError

LOCK_NAME = ".lock"


class RunFolderBusyError(InputError):
    """Another live process writes into this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunFolder:
    """The lock of one run folder (see module docstring); also a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = self.path / LOCK_NAME
        self.held = False
        self._created = False

    def acquire(self) -> None:
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder {self.path} ({exc.strerror or exc}); pass a "
                             "writable --log_root") from exc
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner[1] == socket.gethostname() and owner[0] != os.getpid() \
                        and not _alive(owner[0]):
                    self.lock.unlink(missing_ok=True)  # left by a killed run: take it over
                    continue
                who = f"process {owner[0]} on {owner[1]}" if owner else "another process"
                raise RunFolderBusyError(
                    f"{self.path} is being written by {who} (lock file {self.lock}); wait for that run to "
                    "finish, or choose another --logname / --log_root. If no such run exists, delete the "
                    "lock file") from None
            except OSError as exc:
                raise InputError(f"cannot write the output folder {self.path} ({exc.strerror or exc}); pass "
                                 "a writable --log_root or fix the folder's permissions") from exc
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return

    def _owner(self) -> tuple[int, str] | None:
        try:
            pid, host = self.lock.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Give the folder back; a folder this lock created and nothing was written into (a run refused at
        its start) is removed, so a bad input leaves no trace."""
        if self.held:
            self.lock.unlink(missing_ok=True)
            self.held = False
            if self._created:
                try:
                    self.path.rmdir()  # only when empty
                except OSError:
                    pass

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the ``.<name>.*.tmp`` files an interrupted atomic write left (only with the lock held)."""
        if not self.held:
            return []
        stale = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def __enter__(self) -> RunFolder:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
