# cython: language_level=3
"""Primitives on words of a shared segment: atomics, futex wait/wake, a robust process-shared mutex.

These run once per job or per lock round, so they are in C; what runs once per second (repair,
supervision, statistics) stays in Python and calls them. Errors are shmpool's typed errors
(LockTimeout, AttachError, ...), never a bare OSError or a return code to decode.
"""

import os

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
cdef extern from "<errno.h>":
    int EAGAIN, EBUSY, EDEADLK, EINTR, EPERM, ETIMEDOUT, EOWNERDEAD, ENOTRECOVERABLE
from libc.stdint cimport int64_t, uintptr_t

from shmpool.substrate._log import logger  # loguru, imported when a record needs it (shmpool/substrate/_log.py)

from ..errors import AttachError, InvalidArgument, LockTimeout, ShmPoolError

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_clocklock(pthread_mutex_t *m, int clock, const timespec *abstime)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_consistent(pthread_mutex_t *m)

cdef extern from "<time.h>" nogil:
    int CLOCK_MONOTONIC

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()

__all__ = ["SharedWords", "RobustMutex", "MUTEX_BYTES", "arm_faults", "monotonic_ns", "fence", "membarrier"]

MUTEX_BYTES = sizeof(pthread_mutex_t)  # 40 on x86_64 and aarch64 glibc; the layouts reserve 64
# A blocked lock or wait wakes this often (ns) to run Python's signal handlers (Ctrl-C works),
# then sleeps again until the caller's deadline: PEP 475 for a wait that has no EINTR to give.
cdef int64_t SIGNAL_SLICE_NS = 100_000_000

# ----------------------------------------------------------------- process identity, faults

cdef int64_t _pid = os.getpid()
# Registered for MEMBARRIER_CMD_GLOBAL_EXPEDITED (shm_sync.h): the lookup may then order its cache
# word's BUSY store before its GENERATION load with a compiler barrier instead of an xchg.
cdef bint _asymmetric = shm_membarrier_register() == 0


def _forget_pid_after_fork():
    global _pid, _asymmetric
    _pid = os.getpid()
    _asymmetric = shm_membarrier_register() == 0  # a registration is the process's (its mm's)


cdef bint asymmetric_fences() noexcept:
    return _asymmetric


os.register_at_fork(after_in_child=_forget_pid_after_fork)


cdef int64_t current_pid() noexcept:
    # Cached: getpid() is a system call, and the mutex records the holder on every lock round.
    return _pid


# The test-only fault plan (shmpool.substrate._faults): one C flag checked at each kill point,
# so an unarmed process pays a branch, and the Python hook runs only when a plan is armed.
cdef bint _armed = False
cdef object _fault_hook = None


def arm_faults(hook):
    """Called by shmpool.substrate._faults.arm: ``hook(point_name)`` runs at each kill point of
    the core while armed; None disarms."""
    global _armed, _fault_hook
    _fault_hook = hook
    _armed = hook is not None


cdef bint fault_armed() noexcept:
    return _armed


cdef int fault(str point) except -1:
    if _armed:
        _fault_hook(point)
    return 0


def fence():
    """A sequentially consistent fence in this thread."""
    shm_fence()


def membarrier():
    """A memory barrier in every running thread of every process registered for asymmetric
    fences (each process tries at import), and in this one; False if the kernel refused (then
    lookups that relied on it may be unordered: the caller must not trust what it reads next).
    The coordinator's side of a reader's cache-word handshake (shmpool/data/pins.py)."""
    return shm_membarrier_global() == 0


def monotonic_ns():
    """CLOCK_MONOTONIC in ns, as the core's deadlines use it (time.monotonic_ns reads the same clock)."""
    return shm_monotonic_ns()


# ----------------------------------------------------------------- deadlines, futex

cdef int64_t deadline_ns(object timeout) except? -2:
    """Absolute CLOCK_MONOTONIC ns for a timeout in seconds; -1 for None (no deadline)."""
    if timeout is None:
        return -1
    cdef double t = timeout
    if t != t:
        raise InvalidArgument(argument="timeout", value=timeout, reason="is NaN")
    if t <= 0:
        return shm_monotonic_ns()
    if t > 1e9:  # ~31 years: a deadline nobody will live to see is no deadline
        return -1
    return shm_monotonic_ns() + <int64_t>(t * 1e9)


cdef int wait_word(int64_t *word, int64_t expected, int64_t deadline) except -1:
    """Sleep while *word still holds ``expected`` (its low 32 bits): 1 when woken or changed,
    0 at ``deadline`` (-1: none). Wakes every SIGNAL_SLICE_NS to run signal handlers; a handler
    that raises ends the wait with its exception, otherwise the wait resumes with the time left."""
    cdef int64_t now, until
    cdef timespec ts
    cdef int r
    while True:
        now = shm_monotonic_ns()
        if deadline >= 0 and now >= deadline:
            return 0
        until = now + SIGNAL_SLICE_NS
        if deadline >= 0 and deadline < until:
            until = deadline
        ts = shm_timespec(until)
        with nogil:
            r = shm_futex_wait(word, expected, &ts)
        if r == 0 or r == EAGAIN:
            return 1
        if r != ETIMEDOUT and r != EINTR:
            raise ShmPoolError(f"futex wait failed: {os.strerror(r)}", errno=r)
        PyErr_CheckSignals()  # raises what a handler raised (KeyboardInterrupt)
        if shm_load(word) & 0xFFFFFFFF != expected & 0xFFFFFFFF:
            return 1


cdef int wake_word(int64_t *word, int n) except -1:
    cdef int r = shm_futex_wake(word, n)
    if r < 0:
        raise ShmPoolError(f"futex wake failed: {os.strerror(-r)}", errno=-r)
    return r


# ----------------------------------------------------------------- words of a segment

cdef class SharedWords:
    """The int64 words of a writable buffer (a mapped segment, or a section's memoryview).

    Holds the buffer exported until :meth:`close`, as a memoryview would: the mapping cannot be
    closed under it. Indices are words (8 bytes), checked against the buffer's length.
    """

    def __cinit__(self, buffer, Py_ssize_t offset=0, count=None):
        PyObject_GetBuffer(buffer, &self._buf, PyBUF_WRITABLE)
        self._open = True
        cdef Py_ssize_t available = (self._buf.len - offset) // 8
        if offset < 0 or offset % 8 or (<uintptr_t>self._buf.buf + offset) % 8 or available <= 0:
            self.close()
            raise InvalidArgument(argument="offset", value=offset,
                                  reason="must be a multiple of 8 inside an 8-byte aligned buffer")
        self.count = available if count is None else min(<Py_ssize_t>count, available)
        self.base = <int64_t *>(<char *>self._buf.buf + offset)

    def __dealloc__(self):
        if self._open:
            PyBuffer_Release(&self._buf)

    def close(self):
        """Give the buffer back (idempotent); any later access raises AttachError."""
        if self._open:
            self._open = False
            self.base = NULL
            self.count = 0
            PyBuffer_Release(&self._buf)

    @property
    def closed(self):
        return not self._open

    def __len__(self):
        return self.count

    cdef int64_t *at(self, Py_ssize_t index) except NULL:
        if self.base == NULL:
            raise AttachError(name="shared words", reason="closed in this process")
        if index < 0 or index >= self.count:
            raise IndexError(f"word {index} outside 0..{self.count - 1}")
        return self.base + index

    def load(self, Py_ssize_t index):
        """Acquire load of word ``index``."""
        return shm_load(self.at(index))

    def store(self, Py_ssize_t index, int64_t value):
        """Release store of ``value`` into word ``index``."""
        shm_store(self.at(index), value)

    def fetch_add(self, Py_ssize_t index, int64_t delta):
        """Atomically add ``delta`` (sequentially consistent); returns the value before."""
        return shm_fetch_add(self.at(index), delta)

    def cas(self, Py_ssize_t index, int64_t expected, int64_t desired):
        """Store ``desired`` if the word holds ``expected``, atomically; True if it did."""
        return bool(shm_cas(self.at(index), expected, desired))

    def wait(self, Py_ssize_t index, int64_t expected, timeout=None):
        """Sleep while word ``index`` holds ``expected`` (compared on its low 32 bits): True once
        woken or changed (maybe spuriously: look again), False after ``timeout`` seconds.

        Ctrl-C interrupts it; other signals resume it with the time that remains."""
        cdef int64_t *word = self.at(index)
        return bool(wait_word(word, expected, deadline_ns(timeout)))

    def wake(self, Py_ssize_t index, int n=2147483647):
        """Wake up to ``n`` sleepers on word ``index``; returns how many woke."""
        return wake_word(self.at(index), n)


# ----------------------------------------------------------------- robust mutex

cdef class RobustMutex:
    """A process-shared mutex in a segment that survives its holder's death at any instruction.

    The kernel hands a dead holder's mutex to the next locker with EOWNERDEAD (the robust list);
    that locker marks it consistent, then runs ``on_recover(dead_pid)`` to repair whatever the
    dead holder left half done. A holder records its pid in ``pid_word`` so a waiter that times
    out names it in LockTimeout (a SIGSTOPped holder is alive, so the kernel never frees it).

    Words (indices into ``words``): ``mutex_word`` starts the pthread_mutex_t (MUTEX_BYTES);
    ``pid_word`` is written only by the holder (its pid after locking, 0 before unlocking);
    ``recoveries_word`` counts repairs. One thread holds it at a time; a thread that locks it
    twice gets an error, not a hang.
    """

    def __cinit__(self, SharedWords words not None, Py_ssize_t mutex_word, Py_ssize_t pid_word,
                  Py_ssize_t recoveries_word, str name not None, on_recover=None, str role="table"):
        words.at(mutex_word + (sizeof(pthread_mutex_t) + 7) // 8 - 1)  # the mutex fits in the buffer
        self._words = words
        self._m = <pthread_mutex_t *>words.at(mutex_word)
        self._holder = words.at(pid_word)
        self._recoveries = words.at(recoveries_word)
        self.name = name
        self.on_recover = on_recover
        # The fault points tests arm (shmpool.substrate._faults): won, before the pid is recorded;
        # held, after it (a stopped holder that LockTimeout must name).
        self._won_point = f"lock.won.{role}"
        self._held_point = f"lock.held.{role}"

    def initialize(self):
        """Make the mutex (creator only, before any other process can see the segment)."""
        self._check_open()
        cdef int r = shm_mutex_init(self._m)
        if r:
            raise ShmPoolError(f"cannot make the robust mutex of {self.name!r}: {os.strerror(r)}", errno=r)
        shm_store(self._holder, 0)

    cdef int _check_open(self) except -1:
        if self._words.base == NULL:
            raise AttachError(name=self.name, reason="its lock was closed in this process")
        return 0

    cdef int lock(self, int64_t deadline, double timeout) except -1:
        """Lock by ``deadline`` (absolute CLOCK_MONOTONIC ns, -1: none) or raise LockTimeout."""
        self._check_open()
        cdef int r = pthread_mutex_trylock(self._m)  # uncontended: one CAS, with the GIL held
        cdef int64_t started, now, until
        cdef timespec ts
        if r == EBUSY:
            started = shm_monotonic_ns()
            while True:
                now = shm_monotonic_ns()
                if deadline >= 0 and now >= deadline:
                    raise LockTimeout(lock=self.name, owner_pid=shm_load(self._holder),
                                      waited=(now - started) / 1e9 if timeout < 0 else timeout)
                until = now + SIGNAL_SLICE_NS
                if deadline >= 0 and deadline < until:
                    until = deadline
                ts = shm_timespec(until)
                with nogil:  # the holder may be a thread of ours that needs the GIL to finish
                    r = pthread_mutex_clocklock(self._m, CLOCK_MONOTONIC, &ts)
                if r != ETIMEDOUT:
                    break
                PyErr_CheckSignals()
        if r == 0 or r == EOWNERDEAD:
            self._held_by = PyThread_get_thread_ident()
            self._enter(r == EOWNERDEAD)
            return 0
        if r == EDEADLK:
            raise ShmPoolError(f"lock {self.name!r} is already held by this thread", lock=self.name)
        if r == ENOTRECOVERABLE:  # only if a repair left it unmarked, which _enter never does
            raise ShmPoolError(f"lock {self.name!r} is unrecoverable (a holder died mid-repair)",
                               lock=self.name)
        raise ShmPoolError(f"lock {self.name!r} failed: {os.strerror(r)}", lock=self.name, errno=r)

    cdef int _enter(self, bint owner_died) except -1:
        # A clean release stores 0 here before unlocking; so a pid found at a normal lock is a
        # repair that failed (left on purpose, below), and with EOWNERDEAD it is the dead
        # holder (0 if it died between locking and recording, or between clearing and unlocking).
        cdef int64_t dead = shm_load(self._holder)
        if _armed:
            _fault_hook(self._won_point)  # held, no pid recorded: the next locker gets EOWNERDEAD
        shm_store(self._holder, _pid)
        if owner_died:
            # Consistent first, then repair: a death during the repair gives the next locker
            # EOWNERDEAD again, and the mutex never becomes ENOTRECOVERABLE.
            pthread_mutex_consistent(self._m)
        if owner_died or dead:
            shm_fetch_add(self._recoveries, 1)
            logger.warning("lock {} recovered: holder {} died inside its critical section", self.name,
                           f"pid {dead}" if dead else "(pid not recorded yet)")
            if self.on_recover is not None:
                try:
                    self.on_recover(dead)
                except BaseException:
                    # Leave a pid behind, so the next holder repairs again instead of trusting
                    # half-repaired structures.
                    self._unlock_leaving(dead if dead else _pid)
                    raise
        if _armed:
            _fault_hook(self._held_point)
        return 0

    cdef int unlock(self) except -1:
        return self._unlock_leaving(0)

    cdef int _unlock_leaving(self, int64_t leave_pid) except -1:
        self._check_open()
        # The pid goes before the unlock: a holder killed between the two leaves a pid that the
        # kernel's EOWNERDEAD accompanies, so the next locker repairs (harmlessly: nothing was
        # half done). Relaxed would do for the store; release orders it after our writes anyway.
        shm_store(self._holder, leave_pid)
        self._held_by = 0
        cdef int r = pthread_mutex_unlock(self._m)
        if r == EPERM:
            raise ShmPoolError(f"lock {self.name!r} released by a thread that does not hold it",
                               lock=self.name)
        if r:
            raise ShmPoolError(f"unlock of {self.name!r} failed: {os.strerror(r)}", lock=self.name, errno=r)
        return 0

    def acquire(self, timeout=None):
        """Block until held; LockTimeout (naming the holder's pid) once ``timeout`` s have passed."""
        self.lock(deadline_ns(timeout), -1.0 if timeout is None else <double>timeout)

    def release(self):
        """Unlock (by the thread that locked)."""
        self.unlock()

    def __enter__(self):
        self.lock(-1, -1.0)
        return self

    def __exit__(self, *exc):
        self.unlock()

    def owner(self):
        """Pid recorded by the current holder (0: free, or taken a few instructions ago)."""
        self._check_open()
        return shm_load(self._holder)

    def held_here(self):
        """Whether a thread of this process holds it through this object."""
        return self._held_by != 0

    def close(self):
        """Drop this process's reference to the segment's words (idempotent). Refused while a
        thread of ours holds the lock: the holder still needs it to unlock."""
        if self._held_by:
            logger.debug("lock {} still held here: its words stay mapped until it is released", self.name)
            return
        self._words.close()
