"""One place decides what this platform supports, and a platform shmpool cannot serve is refused.

A missing capability is simulated through ``check_system``'s input (the capabilities to judge),
never by patching the check away; the probes themselves run for real on this machine.
"""

from __future__ import annotations

import fcntl
import os

import pytest

from shmpool.substrate import platform
from shmpool.errors import PlatformUnsupported, ShmPoolError
from shmpool.substrate.instance import SharedInstance
from shmpool.substrate.names import runtime_dir


def test_this_machine_has_every_capability(instance_name):
    caps = platform.check_system(instance_name)
    assert caps.timed_waits and caps.shm_dir and caps.flock_excludes
    assert caps.name_max >= len(f"/shmpool.{instance_name}.jobs-pending")


@pytest.mark.parametrize("missing, capability, hint", [
    ({"timed_waits": False}, "timed semaphore waits", "for ever"),
    ({"name_max": 31}, "name lengths", "at most"),
    ({"shm_dir": False}, "/dev/shm", "tmpfs"),
    ({"flock_excludes": False}, "flock", "SHMPOOL_RUNTIME_DIR"),
])
def test_a_platform_without_a_capability_is_refused_naming_it(missing, capability, hint):
    caps = platform.capabilities()._replace(**missing)
    with pytest.raises(PlatformUnsupported) as err:
        platform.check_system("a-long-instance-name-0123456789", caps)
    assert isinstance(err.value, ShmPoolError) and isinstance(err.value, OSError)
    assert err.value.capability == capability and hint in err.value.reason
    assert capability in str(err.value)


def test_a_short_name_fits_a_short_name_limit():
    caps = platform.capabilities()._replace(name_max=31)
    platform.check_system("ab", caps)  # "/shmpool.ab.jobs-pending" is 24 characters
    platform.check_system("abcdefghi", caps)  # 31: just fits
    with pytest.raises(PlatformUnsupported, match="at most 9 characters"):
        platform.check_system("abcdefghij", caps)


def test_the_flock_probe_sees_two_descriptions_exclude_each_other(tmp_path):
    assert platform.capabilities(tmp_path).flock_excludes
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    # What the probe relies on, done by hand: a second description of a locked file is refused.
    path = tmp_path / "f"
    path.touch()
    a, b = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_the_flock_probe_fails_where_it_cannot_run(tmp_path):
    assert not platform.capabilities(tmp_path / "missing").flock_excludes


def test_creating_and_attaching_ask_the_platform(instance_name):
    # The check runs before anything is created: a refused name leaves nothing behind (conftest).
    assert platform.capabilities().flock_excludes and runtime_dir().is_dir()
    with SharedInstance.create(instance_name) as inst:
        assert inst.is_running() and inst.coordinator()[0] == os.getpid()
        with SharedInstance.attach(instance_name) as other:
            assert other.coordinator_alive()
            inst.mark_stopping()
            assert not other.is_running() and not other.coordinator_alive()
