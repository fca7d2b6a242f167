"""The ``shmpool`` command, imported once and forked per run: for tests that run it dozens of times.

``python -m shmpool`` pays for an interpreter and about 0.35 s of CPU in imports on every run
(1-4 s of wall time each on a loaded 2-core machine), which is all a bad-input row costs. Run as a
script, this module imports the command once, then serves requests on stdin, one JSON line each
({"argv", "env", "stdout", "stderr"}): it forks a child that takes the request's environment,
points fds 0/1/2 at /dev/null and the two files, and runs the same ``main()`` that
``python -m shmpool`` runs; it answers {"status"} with the child's exit status (``sys.exit``
rules). A real process with real streams and a real exit status; what it cannot show is import-time
behaviour (an optional package missing), which needs a real ``python -m shmpool``.

In a test: ``with CliForkServer(env) as cli: status, out, err = cli.run(argv, env, folder)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, TypedDict


class Request(TypedDict):
    argv: list[str]
    env: dict[str, str]
    stdout: str
    stderr: str


def _exit_status(code: object) -> int:
    """What the interpreter makes of ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(request: Request) -> None:
    """Runs in the forked child: never returns."""
    status = 1
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        devnull = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for fd, target in ((devnull, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        from shmpool.coordinator.cli import main

        try:
            status = _exit_status(main(request["argv"]))
        except SystemExit as exc:
            status = _exit_status(exc.code)
        except BaseException:  # as the interpreter would: the traceback on stderr, status 1
            import traceback

            traceback.print_exc()
            status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def serve() -> None:
    import shmpool.coordinator.cli  # noqa: F401 - the point: imported once, before any fork

    for line in sys.stdin:
        request: Request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, wait_status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}), flush=True)


class CliForkServer:
    """The server process, started with environment ``env`` (what the command sees at import)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=env, text=True)

    def run(self, argv: list[str], env: dict[str, str], folder: Path) -> tuple[int, str, str]:
        """Run ``shmpool *argv`` with environment ``env``; (exit status, stdout, stderr)."""
        out, err = folder / "cli.stdout", folder / "cli.stderr"
        stdin: IO[str] | None = self._proc.stdin
        stdout: IO[str] | None = self._proc.stdout
        assert stdin is not None and stdout is not None
        request: Request = {"argv": argv, "env": env, "stdout": str(out), "stderr": str(err)}
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        answer = stdout.readline()
        assert answer, f"the command's fork server died (exit {self._proc.poll()})"
        return int(json.loads(answer)["status"]), out.read_text(), err.read_text()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(30)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> CliForkServer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


if __name__ == "__main__":
    serve()
