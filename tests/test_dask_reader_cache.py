"""A worker's ``shmpool.dask.reader()`` answers from a checked cache: no lock and no system call
per task, yet a closed reader, a second plugin on the host and a restarted daemon are all
noticed (the rules of ShmpoolPlugin's and reader()'s docstrings). One host, one worker, one
cluster for the module; the daemon-killing test runs last and leaves a restarted daemon."""

from __future__ import annotations

import os
import signal

import pytest

distributed = pytest.importorskip("distributed")

import _dask_reader_tasks as tasks  # noqa: E402
from _dask_hosts import START, hosts_cluster, plugin_name, stop_instances  # noqa: E402
from _waiting import wait_for  # noqa: E402
from shmpool import _dask_host as host  # noqa: E402
from shmpool import dask as sd  # noqa: E402
from shmpool.data.region_builder import RegionBuilder  # noqa: E402
from shmpool.errors import InvalidArgument  # noqa: E402

pytestmark = pytest.mark.dask

MiB = 1 << 20
KEY = "hostK"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("cachedata")
    region = RegionBuilder(3, "tiny")
    region.add_layer(1, b"tiny")
    region.write(data / "tiny.region")
    plugin = plugin_name()
    instances = [host.instance_name(plugin, KEY)]
    try:
        with hosts_cluster({KEY: 1}) as client:
            client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data, linger=1.0, memory_limit=16 * MiB))
            yield {"client": client, "data": data, "instance": instances[0], "more": instances}
    finally:
        assert not stop_instances(*instances)


def test_repeated_calls_reuse_one_reader_and_check_the_folder_at_most_once_an_interval(served):
    got = served["client"].submit(tasks.checked_calls, 2000, pure=False).result(60)
    assert got["same"]
    # The runtime folder is looked at (one stat) at most once per LIVENESS_INTERVAL, not per
    # call: a stat releases the GIL, which a busy worker's event loop then keeps.
    assert got["stat"] <= got["seconds"] / sd.LIVENESS_INTERVAL + 1, got


def test_a_closed_reader_is_replaced_by_the_next_call(served):
    got = served["client"].submit(tasks.closed_then_again, pure=False).result(60)
    assert got == {"replaced": True, "open": True, "reads": True}


def test_a_task_after_a_second_registration_refuses_even_while_the_worker_keeps_its_answer_fresh(served):
    client, data = served["client"], served["data"]
    second = plugin_name()
    served["more"].append(host.instance_name(second, KEY))
    client.run(tasks.start_hammer)
    try:
        client.register_plugin(sd.ShmpoolPlugin(second, data_dir=data, linger=1.0, memory_limit=16 * MiB))
        with pytest.raises(InvalidArgument, match=f"several shmpool plugins serve host '{KEY}'"):
            client.submit(sd.reader, pure=False).result(60)
    finally:
        assert all(client.run(tasks.stop_hammer).values())
    client.unregister_worker_plugin(second, nanny=True)
    wait_for(lambda: host.ready_pid(served["more"][-1]) is None, 30, "the second plugin's instance stopped")
    # Its ready file is gone: the one plugin left is found again.
    assert client.submit(tasks.daemon_pid, pure=False).result(60) == host.ready_pid(served["instance"])


def test_a_worker_reads_from_the_restarted_daemon_after_a_kill(served):
    client, instance = served["client"], served["instance"]
    old = host.ready_pid(instance)
    assert client.submit(tasks.daemon_pid, pure=False).result(60) == old
    os.kill(old, signal.SIGKILL)
    # The Nanny's lease watcher starts a new daemon; the worker's cached reader of the dead one
    # is checked again (at most LIVENESS_INTERVAL after it was last) and replaced.
    wait_for(lambda: host.ready_pid(instance) not in (None, old), START, "a new daemon")
    assert client.submit(tasks.daemon_pid, pure=False).result(60) == host.ready_pid(instance)
