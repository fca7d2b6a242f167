"""Registering ShmpoolPlugin as a Dask user would: twice, two of them, or on a cluster without
Nannies. Each case is a clear error or a documented behaviour (ShmpoolPlugin's docstring)."""

from __future__ import annotations

import json
import os
import secrets

import pytest

distributed = pytest.importorskip("distributed")

import _dask_tasks as tasks  # noqa: E402
from _dask_hosts import hosts_cluster, plugin_name, stop_instances  # noqa: E402
from _waiting import wait_for  # noqa: E402
from shmpool import _dask_host as host  # noqa: E402
from shmpool import dask as sd  # noqa: E402
from shmpool.data.region_builder import RegionBuilder  # noqa: E402
from shmpool.errors import AttachError, InvalidArgument  # noqa: E402
from shmpool.substrate.names import runtime_dir  # noqa: E402

pytestmark = pytest.mark.dask

MiB = 1 << 20


@pytest.fixture
def data(tmp_path):
    """A plugin folder of one small region, for tasks.where to read."""
    region = RegionBuilder(3, "tiny")
    region.add_layer(1, b"tiny")
    region.write(tmp_path / "tiny.region")
    return tmp_path


def _limit(instance: str) -> int:
    return int(host.call(instance, {"op": "stats"})["stats"]["memory_limit"])


def _leases(instance: str) -> int:
    return int(host.call(instance, {"op": "config"})["leases"])


def test_a_second_registration_with_another_memory_limit_is_refused_and_the_first_serves_on(data):
    plugin = plugin_name()
    instance = host.instance_name(plugin, "hostR")
    try:
        with hosts_cluster({"hostR": 1}) as client:
            client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data, linger=1.0, memory_limit=64 * MiB))
            daemon = host.ready_pid(instance)
            # The same registration again (a notebook cell run twice) changes nothing.
            client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data, linger=1.0, memory_limit=64 * MiB))
            assert (host.ready_pid(instance), _leases(instance)) == (daemon, 1)
            # Another memory limit under the same name: refused, naming what differs.
            with pytest.raises(InvalidArgument) as err:
                client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data, linger=1.0,
                                                        memory_limit=32 * MiB))
            assert "memory_limit=67108864 (this registration: 33554432)" in str(err.value)
            assert "unregister_worker_plugin" in str(err.value)
            assert (host.ready_pid(instance), _leases(instance), _limit(instance)) == (daemon, 1, 64 * MiB)
            assert client.run(tasks.where).popitem()[1]["instance"] == instance
            # Unregistered, then registered with the new limit: a new instance with it.
            client.unregister_worker_plugin(plugin, nanny=True)
            client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data, linger=1.0, memory_limit=32 * MiB))
            assert host.ready_pid(instance) not in (None, daemon)
            assert (_leases(instance), _limit(instance)) == (1, 32 * MiB)
            assert client.run(tasks.where).popitem()[1]["instance"] == instance
    finally:
        assert not stop_instances(instance)


def test_reader_without_a_name_refuses_once_a_second_plugin_serves_the_host(data):
    first, second = plugin_name(), plugin_name()
    instances = [host.instance_name(p, "hostS") for p in (first, second)]
    try:
        with hosts_cluster({"hostS": 1}) as client:
            client.register_plugin(sd.ShmpoolPlugin(first, data_dir=data, linger=1.0, memory_limit=16 * MiB))
            assert client.run(tasks.where).popitem()[1]["instance"] == instances[0]  # resolved and cached
            client.register_plugin(sd.ShmpoolPlugin(second, data_dir=data, linger=1.0, memory_limit=16 * MiB))
            # The same worker process, whose reader() resolved name=None before: now it refuses.
            with pytest.raises(InvalidArgument, match="several shmpool plugins serve host 'hostS'"):
                client.submit(sd.reader, pure=False).result(60)
            assert client.submit(tasks.instance_of, second, pure=False).result(60) == instances[1]
            client.unregister_worker_plugin(second, nanny=True)
            wait_for(lambda: host.ready_pid(instances[1]) is None, 30, "the second plugin's instance stopped")
            assert client.run(tasks.where).popitem()[1]["instance"] == instances[0]
    finally:
        assert not stop_instances(*instances)


def test_reader_names_no_instance_from_stale_spawn_locks_or_dead_ready_files(monkeypatch):
    here = f"stale-{secrets.token_hex(4)}"
    monkeypatch.setenv(sd.HOST_ENV, here)
    stale = [host.instance_name(f"old{i}", here) for i in range(3)]
    made = []
    for instance in stale:  # what nine plugins of a day leave: filelock's files, a dead daemon's ready file
        made.append(runtime_dir() / f"{instance}.dask.spawn.lock")
        made[-1].touch()
    made.append(host.ready_path(stale[0]))
    made[-1].write_text(json.dumps({"pid": 2**22 + 1, "start": 1}))  # above pid_max's default: never alive
    try:
        with pytest.raises(AttachError) as err:
            sd.reader()
        assert "no ShmpoolPlugin serves host" in str(err.value)
        assert not [i for i in stale if i in str(err.value)]
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def test_a_cluster_without_nannies_is_not_served_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv(sd.HOST_ENV, f"threads-{secrets.token_hex(4)}")
    plugin = plugin_name()
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as local, \
            distributed.Client(local) as client:
        # Dask has no Nanny to run it in: registering does nothing (Dask's behaviour, documented).
        assert client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=tmp_path)) == {}
        with pytest.raises(AttachError) as err:
            client.submit(sd.reader, pure=False).result(60)
        assert "processes=False" in str(err.value)
        with pytest.raises(InvalidArgument) as err:
            sd.publish(client, 5, "x", {1: b"x"})
        assert "processes=False" in str(err.value)
    assert not os.path.exists(host.ready_path(host.instance_name(plugin, os.environ[sd.HOST_ENV])))
