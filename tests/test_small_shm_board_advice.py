"""A job board that does not fit in /dev/shm says what shrinks it (issue 24).

At a 16 MiB /dev/shm the default board (32.6 MiB) cannot be reserved. Its SharedMemoryFull used
to advise "lower the memory limit", which bounds the pools and cannot shrink the board by a byte;
the advice now names the settings that do. Runs the start scenario of tests/_small_shm.py in a
private mount namespace (test_small_shm.py's harness): needs root.
"""

from __future__ import annotations

import os

import pytest

from _small_shm_harness import _PROBLEM, _run

MiB = 1024 * 1024

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs on /dev/shm in a namespace needs root"),
    pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""),
]


def test_a_job_board_too_large_for_dev_shm_names_the_board_settings_not_the_memory_limit(instance_name: str) -> None:
    out = _run("start", instance_name, "16m")
    error = out["error"]
    assert error["type"] == "SharedMemoryFull" and error["size"] == 16 * MiB
    message = error["message"]
    assert "the job board of" in message, message
    assert "memory limit (--memory-limit)" not in message and "lower the memory limit" not in message, message
    for setting in ("job_slots=256", "job_payload=65536", "max_clients=256", "--workers 0"):
        assert setting in message, (setting, message)
    assert "the memory limit does not" in message and "--shm-size" in message
    assert out["left_in_shm"] == []
