"""Whose a test instance name is, and which pytest sessions are still alive to look after theirs.

Every test instance is named ``pt-<session>-<worker>-<random>`` (tests/conftest.py): one
session is one pytest run (xdist gives all its workers the same id), one worker one xdist
process (``gw0``, ``gw1``; ``gw`` without xdist). Several sessions run at once on a shared
machine (several developers, CI), and each xdist worker kills instances on purpose and
inspects the remains (``shmpool health`` of a crashed coordinator, then ``shmpool cleanup``).
So a worker judges and removes only the names of its own prefix: another worker's or another
session's dead instance may be exactly what that test is looking at.

A session killed outright (the OOM killer takes a pytest worker with its coordinators) never
runs its own end-of-session clean-up. To tell such a session from a live one, each worker holds
an exclusive ``flock`` on ``<tmp>/shmpool-pytest/<session>-<worker>.lock`` for as long as it
lives: the kernel drops the lock when the process dies, however it dies. A later session sweeps
the dead instances of a prefix whose lock it can take; a prefix with no lock file at all (a
session of an older conftest) only once its objects have not changed for STALE_AGE.
"""

from __future__ import annotations

import fcntl
import re
import tempfile
from pathlib import Path
from typing import IO, NamedTuple

from shmpool.substrate.instance import sweep_dead
from shmpool.substrate.names import PREFIX, instance_names

# (?:^|\.) so that both "pt-..." (an instance name) and "sem.shmpool.pt-..." (a /dev/shm entry) match.
_OWNER_RE = re.compile(r"(?:^|\.)pt-([0-9A-Za-z]{1,8})-([0-9A-Za-z]+)-")
LOCK_DIR = Path(tempfile.gettempdir()) / "shmpool-pytest"
# An instance without a lock file to ask about its session is left alone for this long: far longer
# than any test keeps a dead instance around to inspect it.
STALE_AGE = 3600.0


class Owner(NamedTuple):
    """The pytest session and xdist worker a test instance name belongs to."""

    session: str
    worker: str

    @property
    def prefix(self) -> str:
        return f"pt-{self.session}-{self.worker}-"


def owner(entry: str) -> Owner | None:
    """The owner of a test instance name or /dev/shm entry; None for any other name."""
    match = _OWNER_RE.search(entry)
    return Owner(match[1], match[2]) if match else None


def judged_here(entry: str, me: Owner) -> bool:
    """True if worker ``me`` is the one to judge ``entry``: its own test names, and names of no
    shmpool instance at all.

    A library's name (multiprocessing's ``sem.mp-*``) says nothing about who made it, so the
    worker whose test or module it appeared in judges it. A shmpool instance that is not a test
    instance (``chaos-*``, ``bench-*``, a demo) belongs to a script, which checks its own names
    (the tests that run one assert on them), or to someone else's run on this machine.
    """
    found = owner(entry)
    if found is not None:
        return found == me
    bare = entry[len("sem."):] if entry.startswith("sem.") else entry
    return not bare.startswith(PREFIX)


def _lock_path(who: Owner) -> Path:
    return LOCK_DIR / f"{who.session}-{who.worker}.lock"


def hold_session_lock(me: Owner) -> IO[bytes]:
    """Take ``me``'s lock for the life of this process: close the returned file to give it up."""
    LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)  # shared by every developer's sessions, like /tmp
    lock = open(_lock_path(me), "wb")  # noqa: SIM115 - held until the session ends
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone: the session id is random
    return lock


def release_session_lock(me: Owner, lock: IO[bytes]) -> None:
    _lock_path(me).unlink(missing_ok=True)  # unlinked while still held, so no sweeper takes it meanwhile
    lock.close()


def session_alive(who: Owner) -> bool | None:
    """True while ``who``'s worker process lives, False once it died, None if nothing says."""
    try:
        probe = open(_lock_path(who), "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def sweep_dead_sessions(me: Owner, *, min_age: float | None = None, among: set[Owner] | None = None) -> list[str]:
    """Remove the dead instances of test sessions that died; return the names removed.

    Never touches ``me``'s own names (its own end-of-session check judges them) nor those of a
    live session's worker. ``min_age`` is passed on to ``sweep_dead`` (its default when None);
    ``among`` limits the sweep to those sessions' workers (a test's own).
    """
    removed: list[str] = []
    for prefix_owner in sorted({o for o in map(owner, instance_names("pt-")) if o is not None}):
        if prefix_owner == me or (among is not None and prefix_owner not in among):
            continue
        alive = session_alive(prefix_owner)
        if alive:
            continue
        if alive is None:
            removed += sweep_dead(prefix_owner.prefix, min_age=STALE_AGE)
            continue
        removed += sweep_dead(prefix_owner.prefix, **({} if min_age is None else {"min_age": min_age}))
    _forget_dead_sessions_without_names()
    return removed


def _forget_dead_sessions_without_names() -> None:
    """Remove the lock files of dead sessions that left nothing in /dev/shm to sweep later."""
    try:
        locks = list(LOCK_DIR.glob("*-*.lock"))
    except OSError:
        return
    for path in locks:
        session, _, worker = path.stem.partition("-")
        who = Owner(session, worker)
        if session_alive(who) is False and not instance_names(who.prefix):
            path.unlink(missing_ok=True)
