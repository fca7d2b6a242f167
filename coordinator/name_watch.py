"""The coordinator's watch over its own names in /dev/shm.

Names can vanish under a running coordinator: systemd-logind's ``RemoveIPC=yes`` deletes every
/dev/shm name of a user whose last session ends (shmpool.substrate.removal), and an operator's
``rm /dev/shm/*`` does the same. The coordinator and its readers go on through their mappings and
see nothing; everyone who attaches afterwards fails. Left alone, the coordinator would publish
for ever into segments nobody new can reach, restart workers that cannot attach, and keep its
lock so that nothing else can take the name.

So the coordinator's reaper asks :meth:`NameWatch.check` every round. Two checks, both cheap:

- every round (20 ms while the reaper has work, at most 1 s apart when idle), ``fstat`` of a
  descriptor kept open on the control segment: ``st_nlink`` drops to 0 the moment its name is
  unlinked (2.2 µs a call, measured). RemoveIPC takes every name at once, so this alone sees it
  within a round (20 ms measured on a busy reaper), and always before a dead worker could be
  restarted into the void: a worker's exit wakes the reaper into a round that checks this first.
- every ``FULL_CHECK_INTERVAL``, ``lstat`` of every other name the instance had when it started
  (6 today: 5 segments and the wake semaphore, 8 µs; 266 when the board still had a semaphore per
  client channel, about 1 ms), compared by device and inode with what was created: a single semaphore removed by hand, or a name
  removed and created again by someone else, is noticed too.

What the coordinator then does (stop, with an ERROR) is decided in coordinator.py; the decision
and the reasons against recreating the names are in docs/operations.md, "Names removed under a
running instance". At stop, :meth:`unlink_ours` removes exactly the names still ours: a name
recreated by someone else since is not ours to remove.
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from shmpool.substrate._log import logger

from shmpool.errors import InstanceExists
from shmpool.substrate.names import list_objects, segment_name, semaphore_name
from shmpool.substrate.removal import REMOVEIPC_ADVICE, coordinator_pid, removed_reason
from shmpool.substrate.trust import SHM_DIR, sem_path, shm_path

__all__ = ["NameWatch", "LostNames", "FULL_CHECK_INTERVAL", "lost_names_error", "instance_exists", "removed_under"]

FULL_CHECK_INTERVAL = 1.0  # seconds between checks of every name (the control segment: every call)
_SHOWN = 6  # names quoted in a report; the count says the rest


@dataclass(frozen=True)
class LostNames:
    """What the watch found: names gone, and names now pointing at another object than ours."""
    name: str
    removed: tuple[str, ...]
    replaced: tuple[str, ...]
    watched: int

    def describe(self) -> str:
        """'/dev/shm/shmpool.N.control, ... (6 of 6 names removed)' for the ERROR."""
        gone = list(self.removed) + [f"{path} (now another object)" for path in self.replaced]
        shown = ", ".join(gone[:_SHOWN]) + (", ..." if len(gone) > _SHOWN else "")
        replaced = f", {len(self.replaced)} replaced" if self.replaced else ""
        return f"{shown} ({len(self.removed)} of {self.watched} names removed{replaced})"


def lost_names_error(lost: LostNames) -> str:
    """The coordinator's ERROR: what went, the likely cause and its fix, and what happens now."""
    return (f"the shared-memory names of instance {lost.name!r} were removed from /dev/shm while coordinator "
            f"pid {os.getpid()} served it: {lost.describe()}. Likely cause: {REMOVEIPC_ADVICE}. Stopping now: "
            "readers and clients that attached before keep their mappings until they see the stop, nothing new "
            "can attach until a coordinator is started again")


def removed_under(name: str) -> int | None:
    """Pid of a coordinator holding ``name``'s lock while the instance's control segment or its
    wake semaphore (both there for as long as the coordinator serves) is gone.

    What health, cleanup and a new coordinator all ask before saying anything else."""
    pid = coordinator_pid(name)
    if pid is None or not SHM_DIR.is_dir():
        return None
    needed = (shm_path(segment_name(name, "control")), sem_path(semaphore_name(name, "wake")))
    return None if all(path.exists() for path in needed) else pid


def instance_exists(name: str, owner_pid: int | None) -> InstanceExists:
    """InstanceExists for a name whose coordinator lock is taken, naming its holder and, when its
    names are gone, why (``owner_pid``: what the control segment said, None if unreadable)."""
    removed = removed_under(name)
    if removed is not None:
        return InstanceExists(name=name, owner_pid=removed, reason=removed_reason(name, removed))
    return InstanceExists(name=name, owner_pid=owner_pid or coordinator_pid(name))


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        logger.debug("closing the name watch's control descriptor failed: {}", exc)


class NameWatch:
    """Notices when the /dev/shm names of instance ``name`` are removed or replaced.

    Create it once everything is created (every name present then counts as the instance's). It
    owns one descriptor on the control segment; ``close()`` (idempotent) releases it. Where
    /dev/shm is not a listable folder (macOS) there is nothing to watch and ``check`` finds nothing.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._fd = -1
        self._ids: dict[str, tuple[int, int]] = {}  # /dev/shm path -> (st_dev, st_ino) as created
        self._next_full = time.monotonic() + FULL_CHECK_INTERVAL
        self._finalizer: weakref.finalize[[int], NameWatch] | None = None
        self._control = str(shm_path(segment_name(name, "control")))
        if not SHM_DIR.is_dir():
            return
        for path in self._paths_now():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # gone between the listing and now: not one of ours to watch
            self._ids[str(path)] = (st.st_dev, st.st_ino)
        try:
            self._fd = os.open(self._control, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:  # removed before we looked: the first check says so
            logger.debug("name watch of {!r} could not open {}: {}", name, self._control, exc)
        else:
            self._finalizer = weakref.finalize(self, _close, self._fd)

    @property
    def watched(self) -> int:
        """How many names the watch compares."""
        return len(self._ids)

    def check(self, *, full: bool | None = None) -> LostNames | None:
        """None while every watched name is ours; else what is gone. Cheap: call it every round.

        ``full`` forces (True) or skips (False) the check of every name; by default it runs
        every FULL_CHECK_INTERVAL seconds."""
        if not self._ids:
            return None
        control_gone = self._control_unlinked()
        now = time.monotonic()
        if full is None:
            full = now >= self._next_full
        if not (control_gone or full):
            return None
        self._next_full = now + FULL_CHECK_INTERVAL
        removed, replaced = self._compare()
        if not removed and not replaced:
            return None
        return LostNames(self.name, tuple(removed), tuple(replaced), len(self._ids))

    def _control_unlinked(self) -> bool:
        if self._fd < 0:
            return True
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def _compare(self) -> tuple[list[str], list[str]]:
        removed: list[str] = []
        replaced: list[str] = []
        for path, ident in self._ids.items():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                removed.append(path)
                continue
            if (st.st_dev, st.st_ino) != ident:
                replaced.append(path)
        return removed, replaced

    def unlink_ours(self) -> list[str]:
        """Remove the watched names that are still the objects we created; returns those removed.

        For a stop after names were lost: the ones left (a partial removal) go like at any stop,
        while one that another process created under the same name since is left to it. Names
        made after the watch started (growth segments) go too, but only while the control
        segment is still ours: without it, a new instance may own them."""
        removed = []
        control_ours = self._control in self._ids and self._is_ours(self._control, self._ids[self._control])
        later = [str(p) for p in self._paths_now() if str(p) not in self._ids] if control_ours else []
        for path, ident in [*self._ids.items(), *((p, None) for p in later)]:
            try:
                if ident is None or self._is_ours(path, ident):
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("could not remove {} of instance {!r}: {}", path, self.name, exc)
        if removed:
            logger.info("removed the {} names of {!r} that were still there", len(removed), self.name)
        return removed

    @staticmethod
    def _is_ours(path: str, ident: tuple[int, int]) -> bool:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == ident

    def _paths_now(self) -> list[Path]:
        segments, semaphores = list_objects(self.name)
        return [shm_path(s) for s in segments] + [sem_path(s) for s in semaphores]

    def close(self) -> None:
        """Release the control descriptor (idempotent); ``check`` finds nothing afterwards."""
        self._ids = {}  # a reaper still running past its join must not fstat a reused descriptor
        self._fd = -1
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "NameWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

