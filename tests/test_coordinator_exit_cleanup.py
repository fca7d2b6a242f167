"""A program that never calls ``stop()`` leaves nothing in /dev/shm when it ends.

Each test runs a real program in a subprocess that starts a Coordinator with one worker and then
ends in one of the ways a script ends: falling off the end, an uncaught exception, SIGTERM from a
supervisor, SIGINT from Ctrl-C. After it has gone, none of the instance's names may remain.
SIGKILL is the one ending left to ``shmpool cleanup --dead`` (nothing can run then).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from shmpool.substrate.names import list_objects

# The program under test: start, say so, then end as argv[2] says. No stop(), no `with`.
PROGRAM = textwrap.dedent("""
    import os, signal, sys, time
    import shmpool

    name, ending = sys.argv[1], sys.argv[2]
    # Start as a program run from a shell does: an ignored or blocked signal is inherited through
    # exec, and the pytest worker that runs this may have either from an earlier test's library.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if ending == "user-handler":
        # A program with its own SIGTERM handler keeps it: shmpool must not replace it.
        signal.signal(signal.SIGTERM, lambda *_: print("user handler ran", flush=True) or sys.exit(3))
    coord = shmpool.Coordinator(name, workers=1)
    coord.start()
    print("started", flush=True)
    if ending == "exception":
        raise RuntimeError("the program failed")
    if ending == "fork-child-exits":
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a forked child's normal exit (atexit runs in it) must not stop the parent's instance
        os.waitpid(pid, 0)
        with shmpool.attach(name) as reader:
            print("still served", flush=True)
    if ending in ("sigterm", "sigint", "user-handler"):
        while True:
            time.sleep(0.05)
""")

# Generous bound that only catches a hang: a stop drains jobs and stops a worker in well under 10 s.
DEADLINE = 60


def _run(name: str, ending: str, send: signal.Signals | None = None) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, name, ending], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first == "started\n", (first, proc.stderr.read() if proc.stderr else "")
    assert list_objects(name) != ([], []), "the instance should exist while the program runs"
    if send is not None:
        os.kill(proc.pid, send)
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, first + out, err


def _left(name: str) -> list[str]:
    segments, semaphores = list_objects(name)
    return segments + semaphores


def test_normal_exit_without_stop_unlinks_the_instance(instance_name):
    code, _, err = _run(instance_name, "end")
    assert code == 0, err
    assert _left(instance_name) == []


def test_uncaught_exception_unlinks_the_instance(instance_name):
    code, _, err = _run(instance_name, "exception")
    assert code == 1 and "the program failed" in err
    assert _left(instance_name) == []


def test_sigterm_unlinks_the_instance_and_still_ends_by_sigterm(instance_name):
    code, _, err = _run(instance_name, "sigterm", signal.SIGTERM)
    # The default action is kept: the process still dies of SIGTERM, as its supervisor expects.
    assert code == -signal.SIGTERM, err
    assert _left(instance_name) == []


def test_sigint_unlinks_the_instance(instance_name):
    code, _, err = _run(instance_name, "sigint", signal.SIGINT)
    assert code == -signal.SIGINT and "KeyboardInterrupt" in err, (code, err)
    assert _left(instance_name) == []


def test_a_users_own_sigterm_handler_is_kept(instance_name):
    code, out, err = _run(instance_name, "user-handler", signal.SIGTERM)
    assert "user handler ran" in out and code == 3, (code, out, err)
    assert _left(instance_name) == []  # their handler exited normally: the exit cleanup ran


def test_a_forked_childs_exit_leaves_the_parents_instance_alone(instance_name):
    code, out, err = _run(instance_name, "fork-child-exits")
    assert code == 0 and "still served" in out, (code, out, err)
    assert _left(instance_name) == []
