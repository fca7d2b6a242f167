"""What a coordinator tells each worker it starts, besides the job allow-list: ``SHMPOOL_WORKER``.

JSON in the worker's environment, like the allow-list (workers/jobs.py): names and plain data,
never pickle, and nothing a client can write.

- ``sys_path``: the coordinator's ``sys.path``, put first in the worker's, so a job module next to
  the user's script (the script's folder is ``sys.path[0]``) imports in the workers from any
  working directory, and resolves to the same files as in the coordinator.
- ``init`` / ``init_args``: ``"module:function"`` run once as ``fn(*init_args)`` before the worker
  serves (``Coordinator(worker_init=..., worker_init_args=...)``); args are JSON data (tuples
  arrive as lists).
- ``job_timeout``: the default execution limit in seconds of a job that names none (None: none).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from shmpool.jobs.callables import TARGET_RE, import_target, target_of
from shmpool.jobs.codec import check_job_timeout
from shmpool.errors import InvalidArgument, InvalidJob

__all__ = ["WorkerConfig", "CONFIG_ENV"]

CONFIG_ENV = "SHMPOOL_WORKER"


@dataclass(frozen=True)
class WorkerConfig:
    sys_path: tuple[str, ...] = ()
    init: str | None = None
    init_args: tuple[Any, ...] = ()
    job_timeout: float | None = None

    @classmethod
    def build(cls, *, init: Callable[..., Any] | str | None = None, init_args: Any = (),
              job_timeout: float | None = None, sys_path: list[str] | None = None) -> "WorkerConfig":
        """Checked where a mistake is the caller's: InvalidJob for an initializer a worker could not
        import by name, InvalidArgument for args that are not JSON data or a bad timeout."""
        target = None
        if init is not None:
            if isinstance(init, str):
                if not TARGET_RE.match(init):
                    raise InvalidJob(job="worker_init", target=init, reason="not a 'package.module:function' path",
                                     use="used as a worker initializer")
                target = init
            else:
                target = target_of(init, job="worker_init", use="used as a worker initializer")
        try:
            args = tuple(init_args)
            json.dumps(list(args))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(argument="worker_init_args", value=init_args,
                                  reason=f"a sequence of JSON data (it travels to the workers as JSON): {exc}") from None
        path = sys.path if sys_path is None else sys_path
        # '' means "the current folder" in sys.path: the coordinator's, made explicit.
        here = os.getcwd()
        return cls(tuple(p or here for p in path), target, args, check_job_timeout(job_timeout))

    def to_json(self) -> str:
        return json.dumps({"sys_path": list(self.sys_path), "init": self.init, "init_args": list(self.init_args),
                           "job_timeout": self.job_timeout})

    @classmethod
    def from_json(cls, text: str) -> "WorkerConfig":
        data = json.loads(text)
        timeout = data.get("job_timeout")
        return cls(tuple(str(p) for p in data.get("sys_path", ())), data.get("init"),
                   tuple(data.get("init_args", ())), None if timeout is None else float(timeout))

    @classmethod
    def from_env(cls) -> "WorkerConfig":
        text = os.environ.get(CONFIG_ENV)
        return cls.from_json(text) if text else cls()

    def apply_sys_path(self) -> None:
        """The coordinator's entries first, then the worker's own that it lacks."""
        if self.sys_path:
            sys.path[:] = list(self.sys_path) + [p for p in sys.path if p not in self.sys_path]

    def run_initializer(self) -> None:
        """Import and run the initializer (any exception propagates: the worker reports and exits)."""
        if self.init is not None:
            import_target(self.init)(*self.init_args)
