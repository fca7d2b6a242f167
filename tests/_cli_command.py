"""The ``cli`` fixture: ``shmpool`` commands run forked from a command server (tests/_cli_forkserver.py).

A ``python -m shmpool`` pays an interpreter and the command's imports (about 0.35 s of CPU) for a
command that itself takes milliseconds; forked from a server that imported the command once, each
run is a real process with real streams and a real exit status running the same ``main()``.
What it cannot show is import-time behaviour (an optional package missing, the ``-m`` entry): tests
of that run ``python -m shmpool`` themselves. One server per test module (and xdist worker).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from _cli_forkserver import CliForkServer

Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """``cli(*args, env=None)``: ``shmpool *args`` with ``env`` (default: this process's
    environment at the call), as a CompletedProcess like ``subprocess.run(..., text=True)``'s."""
    folder = tmp_path_factory.mktemp("cli")
    with CliForkServer(dict(os.environ)) as server:
        def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
            status, out, err = server.run(list(args), dict(os.environ if env is None else env), folder)
            return subprocess.CompletedProcess(["shmpool", *args], status, out, err)

        yield run
