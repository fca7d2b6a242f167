"""Test-only fault injection: die (or stop) at a named instruction of the protocol.

Crash windows a few instructions wide cannot be hit by random kills, so the tests arm a named
point in a child process, ``SHMPOOL_FAULT=submit.popped`` (SIGKILL there) or
``SHMPOOL_FAULT=lock.held:stop`` (SIGSTOP there, for a wedged holder), and the code calls
``point(name)`` at that instruction. The compiled core's kill points (lock rounds, slot
transitions) call back into ``point`` only while a plan is armed: ``arm`` tells the core, which
checks one C flag at each point. ``name@/path/token`` fires once among all the processes
that inherit it (workers and their replacements): the one that unlinks the token file first. Unarmed, each point costs one module attribute read
(``if _faults.ARMED``) on the paths that have them.
"""

from __future__ import annotations

import os
import signal

from .._core import arm_faults

__all__ = ["ARMED", "arm", "point"]

_target: str | None = None
_token: str | None = None
_action = signal.SIGKILL
ARMED = False


def arm(spec: str | None) -> None:
    """Arm ``name[:stop][@token]`` (None disarms); also read from $SHMPOOL_FAULT at import."""
    global ARMED, _target, _action, _token
    if not spec:
        ARMED, _target = False, None
        arm_faults(None)
        return
    spec, _, token = spec.partition("@")
    name, _, action = spec.partition(":")
    _target, _token = name, token or None
    _action = signal.SIGSTOP if action == "stop" else signal.SIGKILL
    ARMED = True
    arm_faults(point)


def point(name: str) -> None:
    if name != _target:
        return
    if _token is not None:
        try:
            os.unlink(_token)
        except FileNotFoundError:
            return  # another process fired it already
    os.kill(os.getpid(), _action)


arm(os.environ.get("SHMPOOL_FAULT"))
