"""The lock that makes one coordinator the owner of an instance name, and the runtime files it
removes when it lets go.

A coordinator holds an ``flock`` on ``<runtime dir>/<name>.coordinator.lock`` for its whole life;
the kernel drops it if the coordinator dies, so a newcomer can take over. A clean stop also
removes what the instance made in the runtime folder: that file, the table and job-board lock
files (``<name>.table.lock``, ``<name>.jobs.lock``) and an empty default spill folder. Kept,
they piled up: 223 empty lock files after one afternoon of test names.

Removing a lock file races with a process that opened it just before: that process then locks
the removed inode and believes it owns the name while a third, opening the path anew, locks a
fresh file (the flock-unlink race). Two rules close it: the file is removed only by its holder,
while it still holds it; and :meth:`NameLock.try_acquire` checks, once its flock succeeds, that
the path still names the very file it locked, and starts over if not. The table and job-board
lock files are removed under the name lock too, so no new instance of the name can be creating
its own meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from shmpool.substrate._log import logger

from shmpool.substrate.names import runtime_dir

__all__ = ["NameLock", "remove_instance_files"]


class NameLock:
    """The flock of ``path``, taken without waiting; released (and the file removed) once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock now if nobody holds it; False if somebody does."""
        if self._fd is not None:
            return True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                self._fd = fd
                return True
            # Its holder removed the file between our open and our flock: we hold a dead inode.
            os.close(fd)

    def release(self, *, remove: bool = False) -> None:
        """Let go (idempotent); with ``remove``, delete the file first, while still holding it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if remove:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:  # the lock still goes; only a file is left behind
                    logger.debug("cannot remove lock file {}: {}", self.path, exc)
        finally:
            os.close(fd)  # drops the flock


def remove_instance_files(name: str, spill_dir: Path | None = None) -> list[Path]:
    """Remove the table and job-board lock files of instance ``name`` and ``spill_dir`` if empty.

    Call it holding the name's NameLock, after the instance's shared memory is gone: no process
    of a new instance of the name can then be using these files. Returns what was removed.
    """
    removed = []
    folder = runtime_dir()
    for kind in ("table", "jobs"):
        path = folder / f"{name}.{kind}.lock"
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.debug("cannot remove {}: {}", path, exc)
    if spill_dir is not None:
        try:
            spill_dir.rmdir()  # only if empty: never a file the user put there
            removed.append(spill_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.debug("spill folder {} kept: {}", spill_dir, exc)
    return removed
