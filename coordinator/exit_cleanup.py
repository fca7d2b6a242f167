"""Stopping the coordinators a program did not stop: at interpreter exit and on SIGTERM.

A script that starts a Coordinator and ends without ``stop()`` (no ``with``, an exception before
it, or simply its last line) would otherwise leave every segment and semaphore of its instance in
/dev/shm (266 names for one worker) until someone runs ``shmpool cleanup``. Like
``multiprocessing.shared_memory`` and Ray, shmpool cleans up after such a program:

* **Interpreter exit** (the end of the script, ``sys.exit``, an uncaught exception, and SIGINT,
  whose default handler raises KeyboardInterrupt): one ``atexit`` hook stops every coordinator
  this process started and did not stop. It is registered at the first ``start()``, so it runs
  before the hooks of modules imported earlier (atexit runs last-registered first), loguru's
  among them: the stop's own warnings are still printed. shmpool imports loguru only when a
  process logs (shmpool/substrate/_log.py), so loguru may arrive after that ``start()``, with its
  hook that removes every sink at exit: the hook is then registered again, right after
  loguru's import, to stay ahead of it.
* **SIGTERM** (a supervisor's stop, ``kill PID``): Python's default is to die at once, running
  nothing. Where the handler is still that default, ``start()`` (in the main thread) installs one
  that stops the coordinators and then chains to the default: it restores SIG_DFL and sends the
  signal again, so the process still ends *by SIGTERM*, as whoever sent it expects. A second
  SIGTERM during the stop kills at once. A program that installed its own handler keeps it (it
  decides what SIGTERM means; the exit hook still runs if its handler exits).
* **SIGKILL**, the OOM killer, power loss: nothing can run; ``shmpool cleanup --dead`` is for that.

A forked child inherits the hook, the handler and the registry, but never stops its parent's
instance: each coordinator is recorded with the pid that started it.

Rejected: ``weakref.finalize`` per coordinator (its single atexit hook is registered by whichever
module first made a finalizer, often before loguru, so the stop's warnings were lost) and raising
SystemExit from the SIGTERM handler (a bare ``except:`` in the program would swallow it, and the
process would no longer end by the signal).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Protocol

from shmpool.substrate._log import logger, when_loguru_imported
from shmpool.substrate.fork_safe import ForkSafeLock

__all__ = ["forget", "remember"]


class _Stoppable(Protocol):
    name: str

    def stop(self) -> None: ...


# Coordinators started and not stopped, each with the pid that started it. Weak: the registry
# never keeps a coordinator alive (a running one is kept alive by its reaper thread anyway).
_live: "weakref.WeakKeyDictionary[_Stoppable, int]" = weakref.WeakKeyDictionary()
_lock = ForkSafeLock()  # made afresh in a forked child (shmpool/substrate/fork_safe.py)
_hook_registered = False
_exiting = False  # the exit hook has started


def remember(coord: _Stoppable) -> None:
    """Stop ``coord`` at interpreter exit or SIGTERM unless it is stopped before."""
    global _hook_registered
    with _lock:
        _live[coord] = os.getpid()
        if not _hook_registered:
            atexit.register(_stop_all, "interpreter exit")
            _hook_registered = True
            when_loguru_imported(_stay_ahead_of_loguru)
    _install_sigterm_handler()


def _stay_ahead_of_loguru(_log: object) -> None:
    # loguru's import has just registered `logger.remove` at exit: ours must come after it to run
    # before it. Not while the exit hooks run (a record of our stop's imported loguru): a hook
    # registered then is never called, and ours is running already.
    if not _exiting:
        atexit.unregister(_stop_all)
        atexit.register(_stop_all, "interpreter exit")


def forget(coord: _Stoppable) -> None:
    """``coord`` was stopped: nothing to do for it at exit; the SIGTERM default is back if it was last."""
    with _lock:
        _live.pop(coord, None)
        last = not _live
    if last and signal.getsignal(signal.SIGTERM) is _on_sigterm and _in_main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_all(why: str) -> None:
    global _exiting
    if why == "interpreter exit":
        _exiting = True
    me = os.getpid()
    with _lock:
        ours = [c for c, pid in _live.items() if pid == me]  # a forked child stops nothing of its parent's
    for coord in ours:
        logger.info("stopping coordinator {!r} at {} (the program did not call stop())", coord.name, why)
        try:
            coord.stop()
        except Exception:  # the next coordinator must still be stopped
            logger.exception("stopping coordinator {!r} at {} failed; `shmpool cleanup {}` removes what "
                             "is left", coord.name, why, coord.name)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _install_sigterm_handler() -> None:
    # signal.signal works only in the main thread; a coordinator started elsewhere relies on the
    # exit hook alone. Only the default is replaced: a program's own handler is its decision.
    if _in_main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM while we stop kills at once
    _stop_all(f"signal {signal.Signals(signum).name}")
    os.kill(os.getpid(), signum)  # chain to the default action: the process ends by the signal
