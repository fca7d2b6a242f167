"""The watchdog waits on a pidfd of its coordinator (no periodic wake-up), and knows a recycled
pid and a kernel without pidfds. A real process stands in for the coordinator."""

from __future__ import annotations

import os
import select
import subprocess
import sys


from shmpool.substrate._proc import start_token as process_start_token
from shmpool.workers import watchdog


def test_the_pidfd_of_a_live_coordinator_is_readable_once_it_dies():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fd = watchdog._coordinator_pidfd(proc.pid, process_start_token(proc.pid))
        assert fd is not None and fd >= 0
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            assert poller.poll(0) == []  # alive: nothing to read
            proc.kill()
            proc.wait(10)
            assert poller.poll(10_000)  # the 10 s only catches a hang
        finally:
            os.close(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_recycled_pid_counts_as_gone_and_a_kernel_without_pidfds_falls_back(monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        token = process_start_token(proc.pid)
        assert watchdog._coordinator_pidfd(proc.pid, token + 1) == -1  # another process under that pid

        def refused(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", refused)
        assert watchdog._coordinator_pidfd(proc.pid, token) is None
    finally:
        proc.kill()
        proc.wait()
