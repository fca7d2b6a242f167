"""A Dask host daemon whose instance's names are removed from /dev/shm under it (RemoveIPC=yes).

The daemon's Coordinator notices and stops itself (docs/operations.md, "Names removed under a
running instance"); the daemon must follow it: say why, withdraw its ready file and socket, and
exit with a failure status, so that the next ``ensure_host`` (a Nanny's lease watcher, or a
Nanny's setup) starts a fresh daemon instead of trusting one that serves nothing. Names are
removed with plain ``os.unlink``, as logind does.
"""

from __future__ import annotations

import os
import time

import pytest

distributed = pytest.importorskip("distributed")

import _dask_tasks as tasks  # noqa: E402
from _dask_hosts import START, addresses, hosts_cluster, plugin_name, stop_instances  # noqa: E402
from _removed_names import remove_names  # noqa: E402
from _waiting import wait_for  # noqa: E402
from shmpool import _dask_host as host  # noqa: E402
from shmpool import dask as sd  # noqa: E402
from shmpool.data.region_builder import RegionBuilder  # noqa: E402
from shmpool.errors import AttachError  # noqa: E402
from shmpool.substrate.names import list_objects, runtime_dir  # noqa: E402
from shmpool.substrate.trust import SHM_DIR  # noqa: E402

pytestmark = pytest.mark.dask

MiB = 1 << 20
DIM = 3
# Only catches a hang (tests/README.md): the coordinator notices within a reaper round (20 ms)
# and stops within about a second, the daemon within ACCEPT_POLL (0.1 s) after it; this turns
# "never" into a failure on a loaded 2-core machine.
EXIT_DEADLINE = 30.0


@pytest.fixture
def data(tmp_path):
    """A test folder whose ``data`` is a plugin folder of one region of dimension DIM (the
    store, ``store``, is the test's to make or the plugin's)."""
    (tmp_path / "data").mkdir()
    _region(tmp_path / "data" / "base.region", b"from data_dir")
    return tmp_path


def _region(path, content: bytes) -> None:
    region = RegionBuilder(DIM, "names-lost")
    region.add_layer(1, content)
    region.write(path)


def _exit_status(pid: int, instance: str) -> int:
    """The exit status of child ``pid`` (ensure_host started the daemon from this process)."""
    deadline = time.monotonic() + EXIT_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    pytest.fail(f"the host daemon {pid} did not exit within {EXIT_DEADLINE} s of losing its names:\n"
                f"{_log(instance)[-3000:]}")


def _log(instance: str) -> str:
    return host.log_path(instance).read_text(errors="replace")


def _forget(instance: str) -> None:
    """The runtime-folder files a daemon's starter leaves (filelock's spawn lock, the log)."""
    for kind in ("spawn.lock", "log", "stopped"):
        (runtime_dir() / f"{instance}.dask.{kind}").unlink(missing_ok=True)


def _remove_semaphores(name: str) -> list[str]:
    """Only the semaphores (someone's ``rm /dev/shm/sem.*``): seen by the coordinator's full check,
    once a second, not by its per-round look at the control segment."""
    removed = [e for e in os.listdir(SHM_DIR) if e.startswith(f"sem.shmpool.{name}.")]
    for entry in removed:
        os.unlink(SHM_DIR / entry)
    return removed


@pytest.mark.parametrize("remove", [remove_names, _remove_semaphores], ids=["all", "semaphores"])
def test_host_daemon_exits_1_and_withdraws_when_its_names_are_removed_and_the_next_ensure_host_serves(
        data, monkeypatch, remove):
    key = f"lost-{plugin_name()[-6:]}"
    monkeypatch.setenv(sd.HOST_ENV, key)
    plugin = plugin_name()
    instance = host.instance_name(plugin, key)
    store = data / "store"
    store.mkdir()
    _region(host.store_file(store, DIM, 5), b"published as 5")  # what the cluster published
    config = host.HostConfig(plugin=plugin, data_dir=str(data / "data"), store_dir=str(store),
                             memory_limit=16 * MiB, linger=1.0)
    lease = None
    try:
        old = host.ensure_host(instance, config)
        lease = host.Lease(instance).open()  # what a Nanny holds
        before = sd.reader(plugin).load_layer_context(DIM, 1)
        assert (before.generation, bytes(before.content)) == (5, b"published as 5")
        del before

        removed = remove(instance)
        t0 = time.monotonic()
        assert any(e.startswith("sem.") for e in removed)
        code = _exit_status(old, instance)
        took = time.monotonic() - t0
        log = _log(instance)
        # A failure status, so that a supervisor (or whoever started it) sees one, and why.
        assert code == 1, log
        assert "RemoveIPC" in log, log  # the coordinator's ERROR, with the cause and the fix
        assert f"Dask host instance {instance!r} lost its shared-memory names" in log, log
        assert not host.ready_path(instance).exists() and not host.socket_path(instance).exists()
        assert host.ready_pid(instance) is None
        # Nothing left in /dev/shm (the names still there went at the stop), nothing recreated.
        assert list_objects(instance) == ([], [])
        # The Nanny's lease sees the end at once (its watcher restarts the host): no hang.
        assert lease.sock is not None
        lease.sock.settimeout(EXIT_DEADLINE)
        assert lease.sock.recv(1) == b""
        lease.close()
        # With nobody to start another, a task's reader() fails in its timeout with a typed error
        # that names the cause.
        with pytest.raises(AttachError) as err:
            sd.reader(plugin, timeout=0.5)
        assert "not ready within 0.5 s" in str(err.value), err.value
        assert f"its last daemon (pid {old}) stopped: its instance's names were removed" in str(err.value)
        assert "RemoveIPC" in str(err.value)

        new = host.ensure_host(instance, config)
        assert new != old
        assert host.last_failure(instance) is None  # history once a daemon is ready again
        after = sd.reader(plugin).load_layer_context(DIM, 1)
        assert (after.generation, bytes(after.content)) == (5, b"published as 5")  # caught up again
        del after
        print(f"the daemon exited {took:.2f} s after {len(removed)} of its names were removed")
    finally:
        if lease is not None:
            lease.close()
        host.stop_host(instance)
        assert not stop_instances(instance)
        _forget(instance)


def test_nannies_start_a_fresh_host_daemon_when_its_names_are_removed_and_tasks_read_again(data, warnings):
    plugin = plugin_name()
    key = "hostL"
    instance = host.instance_name(plugin, key)
    try:
        with hosts_cluster({key: 2}) as client:
            client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data / "data", store_dir=data / "store",
                                                    linger=1.0, memory_limit=16 * MiB))
            generation = sd.publish(client, DIM, "names-lost", {1: b"published before"})
            workers = addresses(client, key)
            assert len(workers) == 2
            for address in workers:
                got = client.submit(tasks.read, DIM, 1, workers=[address], pure=False).result(START)
                assert (got["generation"], got["content"]) == (generation, b"published before")
            old = host.ready_pid(instance)

            remove_names(instance)
            t0 = time.monotonic()
            # Both Nannies' lease watchers see their lease end and ensure the host again.
            wait_for(lambda: host.ready_pid(instance) not in (None, old), START, "a fresh host daemon")
            took = time.monotonic() - t0
            wait_for(lambda: host.call(instance, {"op": "config"})["leases"] == 2, START,
                     "both Nannies leasing the fresh daemon")
            log = _log(instance)
            assert "lost its shared-memory names" in log, log
            # The fresh daemon started at the first try: the old one let go of the instance's
            # name before it withdrew its ready file, so no start met it and exited.
            assert "InstanceExists" not in log and log.count("ready: generations") == 2, log
            # Each Nanny (in this process) logged its lease's end, the first with why (a second
            # one slowed past the fresh daemon's start finds the record removed: history then).
            restarts = [m for m in warnings if "went away under a lease" in m]
            assert len(restarts) == 2 and "names were removed from /dev/shm" in restarts[0], warnings
            # Each worker's reader() left the stopped instance for the fresh one: the right bytes,
            # under the generation published before (the fresh daemon caught up from the store).
            for address in workers:
                got = client.submit(tasks.read, DIM, 1, workers=[address], pure=False).result(START)
                assert (got["generation"], got["content"]) == (generation, b"published before")
            # And the cluster publishes on, to the fresh daemon.
            newer = sd.publish(client, DIM, "names-lost", {1: b"published after"})
            got = client.submit(tasks.read, DIM, 1, workers=[workers[0]], pure=False).result(START)
            assert (got["generation"], got["content"]) == (newer, b"published after")
            print(f"a fresh daemon served {took:.2f} s after the names were removed")
    finally:
        assert not stop_instances(instance)
        _forget(instance)
