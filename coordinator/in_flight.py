"""The Coordinator's public calls that use its shared memory, counted so stop() waits for them.

stop() unmaps the instance. Before, a crystallize (or edit, publish_region_file, stats...) that
another thread was running then failed inside, untyped: ValueError "operation forbidden on
released memoryview", TypeError "object of type 'NoneType' has no len()" from the allocator's
clean-up. Now stop() first refuses new calls (CoordinatorStateError) and waits, up to a bound,
for those under way to finish; a call made by the thread that stops (a SIGTERM handler runs
stop() in the main thread, maybe inside a crystallize) is not waited for, or stop() would wait
for itself.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Concatenate, Iterator, ParamSpec, Protocol, TypeVar

from shmpool.errors import CoordinatorStateError

__all__ = ["InFlight", "while_running"]

_R = TypeVar("_R")


class InFlight:
    """Counts calls under way by thread; ``close`` refuses new ones and waits for the others."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._by_thread: Counter[int] = Counter()
        self._closed = False

    @contextmanager
    def running(self) -> Iterator[None]:
        """One call under way; CoordinatorStateError if stop() has begun (unless this thread is
        already inside a call: its nested steps go on)."""
        me = threading.get_ident()
        with self._cond:
            if self._closed and not self._by_thread[me]:
                raise CoordinatorStateError(name=self._name, running=False)
            self._by_thread[me] += 1
        try:
            yield
        finally:
            with self._cond:
                self._by_thread[me] -= 1
                if self._by_thread[me] <= 0:
                    del self._by_thread[me]
                self._cond.notify_all()

    def close(self, timeout: float) -> int:
        """Refuse new calls, wait up to ``timeout`` seconds for other threads' calls to end;
        returns how many are still under way then."""
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            while True:
                others = sum(n for thread, n in self._by_thread.items() if thread != me)
                left = deadline - time.monotonic()
                if not others or left <= 0:
                    return others
                self._cond.wait(left)

    def reopen(self) -> None:
        """After stop(): calls are let in again (they find the coordinator stopped, or restarted)."""
        with self._cond:
            self._closed = False


class _HasInFlight(Protocol):
    _in_flight: InFlight


_S = TypeVar("_S", bound=_HasInFlight)
_P = ParamSpec("_P")


def while_running(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run the Coordinator method as one call under way (stop() waits for it to end)."""

    def run(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._in_flight.running():
            return method(self, *args, **kwargs)

    functools.update_wrapper(run, method)  # its name and docstring (help(), the docs); typed as run
    return run
