"""shmpool.dask on a real Dask cluster of simulated hosts: one scheduler, and per host a
``dask worker`` process (its Nannies) with its own SHMPOOL_DASK_HOST, so each host gets its own
instance although they share /dev/shm. Killing a host's process group is losing that host.

One cluster per module and xdist worker (pytest-xdist may split the module between its
workers, and each then starts its own). Tests do not depend on each other's data or order, and
each leaves the cluster as it found it: hosts A (2 workers) and B (1 worker).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import _dask_tasks as tasks  # noqa: E402
import _shm_orphans as shm_orphans  # noqa: E402
from _dask_hosts import gone, stop_instances  # noqa: E402
from _waiting import wait_for  # noqa: E402
from conftest import TEST_PREFIX  # noqa: E402
from shmpool import _dask_host as host  # noqa: E402
from shmpool import dask as sd  # noqa: E402
from shmpool.errors import AttachError, DimensionNotFound, InvalidArgument, InvalidLayer  # noqa: E402
from shmpool.substrate.instance import SharedInstance  # noqa: E402
from shmpool.substrate.names import PREFIX, SHM_DIR, cleanup, list_objects  # noqa: E402
from shmpool.data.pins import list_pins  # noqa: E402
from shmpool.data.readers import ReaderRegistry  # noqa: E402

pytestmark = pytest.mark.dask

TESTS = Path(__file__).parent
LINGER = 1.0
PLACED = 900  # served by host B only
START = 120.0  # seconds for a simulated host's processes to start on a loaded 2-core machine


class SimulatedHost:
    """A ``dask worker`` process with ``workers`` Nannies for host ``key``, in its own session."""

    def __init__(self, scheduler: str, key: str, workers: int) -> None:
        self.key = key
        self.workers = workers
        env = dict(os.environ, **{sd.HOST_ENV: key},
                   PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nworkers", str(workers),
             "--nthreads", "1", "--name", key, "--no-dashboard", "--death-timeout", "60"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> list[str]:
        """The host is lost: its Nannies and workers die at once (not its daemon, a separate session).

        A lost machine takes its /dev/shm with it; a simulated one shares ours. Its group also
        holds the multiprocessing resource tracker of the ``dask worker`` process, the one that
        would unlink the named semaphores of the Nannies' queues (``sem.mp-*``, six per Nanny)
        when they die; killed with them, it leaves those names to nobody. So the group is stopped
        first (a stopped process creates nothing), the names its processes map are recorded, and
        after the kill those nobody holds any more are removed: what the host's own /dev/shm
        held, and gone with it. Not shmpool's names: the host daemon in its own session owns the
        instance, and that it takes it down by itself is what the tests check. Returns the names
        removed. (Rejected: sparing the tracker, so it unlinks them on EOF. A real host loss
        kills it too, and a test that stays faithful to that should pay for the cleanup itself.)
        """
        try:
            os.killpg(self.proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            self.proc.wait(30)
            return []
        pids = _group(self.proc.pid)
        names = [n for n in shm_orphans.held_by(pids) if PREFIX not in n]
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        # Others of the group are reparented and reaped by init; until they exit their maps hold.
        wait_for(lambda: not shm_orphans.mapped_inodes(pids), 30, f"host {self.key}'s processes gone")
        # No settling: the group is known dead, and another xdist worker's module check, which
        # does wait 0.5 s, must not find these names unheld and blame its own module.
        removed = shm_orphans.orphans(names, settle=0)
        for name in removed:
            (SHM_DIR / name).unlink(missing_ok=True)
        return removed


def _group(pgid: int) -> list[int]:
    """The pids of process group ``pgid`` (field 5 of /proc/PID/stat, after the command name)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def _addresses(client, key: str) -> list[str]:
    return sorted(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
                  if str(w.get("name", "")).startswith(key))


def _wait_workers(client, key: str, count: int) -> list[str]:
    wait_for(lambda: len(_addresses(client, key)) == count, START, f"{count} workers of host {key}")
    return _addresses(client, key)


def _readers_and_pins(instance: str) -> tuple[list[int], list[dict], dict]:
    """Live reader pids, pins and table stats of a host's instance, read from its shared memory."""
    inst = SharedInstance.attach(instance)
    try:
        readers = [r["pid"] for r in ReaderRegistry(inst.control, inst.lock, instance).live()]
        pins = [p.as_dict() for p in list_pins(inst.control, inst.table.block_sizes)]
        return readers, pins, inst.table.stats().as_dict()
    finally:
        inst.close()


@pytest.fixture(scope="module")
def cluster(sample_dir, tmp_path_factory):
    plugin = f"{TEST_PREFIX}{secrets.token_hex(3)}"
    store = tmp_path_factory.mktemp("store")
    local = distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None)
    client = distributed.Client(local)
    client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=sample_dir, store_dir=store, linger=LINGER,
                                            memory_limit=64 << 20, placement={PLACED: ["hostB"]}))
    hosts = {"hostA": SimulatedHost(local.scheduler_address, "hostA", 2),
             "hostB": SimulatedHost(local.scheduler_address, "hostB", 1)}
    state = {"client": client, "plugin": plugin, "store": store, "hosts": hosts, "local": local,
             "instances": {k: host.instance_name(plugin, k) for k in ("hostA", "hostB", "hostC")}}
    try:
        for key, h in hosts.items():
            _wait_workers(client, key, h.workers)
        yield state
    finally:
        try:
            client.shutdown()
        except Exception:  # noqa: S110 - a scheduler already gone is the state teardown wants
            pass
        for h in list(state["hosts"].values()):
            try:
                h.proc.wait(30)
            except subprocess.TimeoutExpired:
                h.kill()
        leftovers = stop_instances(*state["instances"].values())
        assert not leftovers, f"host instances left after the cluster shut down: {leftovers}"


def test_each_host_serves_zero_copy_reads_from_its_own_instance(cluster):
    client, inst = cluster["client"], cluster["instances"]
    seen = client.run(tasks.where)
    assert len(seen) == 3
    assert {s["host"] for s in seen.values()} == {"hostA", "hostB"}
    assert {s["host"]: s["instance"] for s in seen.values()} == {"hostA": inst["hostA"], "hostB": inst["hostB"]}
    assert all(s["zero_copy"] and s["verified"] and s["same_reader"] for s in seen.values())
    # One instance per host, however many workers it has: both of A's workers attached to A's.
    readers_a, _, _ = _readers_and_pins(inst["hostA"])
    assert sorted(readers_a) == sorted(s["pid"] for s in seen.values() if s["host"] == "hostA")


def test_publish_reaches_every_host_with_equal_generations(cluster):
    client = cluster["client"]
    first = sd.publish(client, 77, "prices", {1: b"one" * 100, 2: "two"})
    assert first >= 1
    assert set(client.run(tasks.generation, 77).values()) == {("hostA", first), ("hostB", first)}
    second = sd.publish(client, 77, "prices", {1: b"uno" * 100, 2: "dos"})
    assert second == first + 1
    # Tasks submitted after publish returns read the new content on whichever host they run.
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    futures = [client.submit(tasks.read, 77, 1, workers=[w], pure=False) for w in workers for _ in range(3)]
    results = client.gather(futures)
    assert {r["host"] for r in results} == {"hostA", "hostB"}
    assert all(r["generation"] == second and r["content"] == b"uno" * 100 for r in results)
    assert host.store_generations(cluster["store"])[77][0] == second  # the older file was pruned
    assert len(list(Path(cluster["store"]).glob("d77.*"))) == 1


def test_publish_rejects_bad_input_before_writing_anything(cluster):
    client = cluster["client"]
    before = sorted(os.listdir(cluster["store"]))
    with pytest.raises(InvalidArgument):
        sd.publish(client, 78, "x", {1: b"a"}, plugin="no-such-plugin")
    with pytest.raises(InvalidLayer) as err:
        sd.publish(client, 78, "x", {1.5: b"a"})  # a str is a key (issue 23); a float is no id
    assert err.value.dimension_id == 78 and err.value.layer_id == 1.5
    assert sorted(os.listdir(cluster["store"])) == before


def test_contexts_travel_to_the_client_as_bytes_with_their_metadata(cluster):
    client = cluster["client"]
    generation = sd.publish(client, 79, "text", [(1, "hello river", {"frequency": 0.5, "keywords": ["river"]}),
                                                 (2, b"\x00\x01binary")])
    ctx = client.submit(tasks.context, 79, 1, pure=False).result()
    assert (ctx.dimension_id, ctx.layer_id, ctx.generation) == (79, 1, generation)
    assert ctx.text == "hello river" and ctx.keywords == ("river",) and ctx.frequency == 0.5
    assert ctx.dimension_name == "text" and ctx.verify() and ctx.content.readonly
    coll = client.submit(tasks.collection, [(79, 1), (79, 2), (79, 3)], pure=False).result()
    assert [c.layer_id for c in coll] == [1, 2] and [m.layer_id for m in coll.missing] == [3]
    assert bytes(coll[1].content) == b"\x00\x01binary" and coll[1].verify()
    assert "hello river" in coll.format_for_llm() and "[missing] dimension 79 · layer 3" in coll.format_for_llm()


def test_placement_serves_a_dimension_on_its_hosts_only_and_routes_tasks_there(cluster):
    client = cluster["client"]
    generation = sd.publish(client, PLACED, "big", {1: b"placed"})
    futures = [client.submit(tasks.read, PLACED, 1, resources={sd.resource(PLACED): 1}, pure=False)
               for _ in range(6)]
    assert {(r["host"], r["generation"]) for r in client.gather(futures)} == {("hostB", generation)}
    (address_a, *_) = _addresses(client, "hostA")
    with pytest.raises(DimensionNotFound):
        client.submit(tasks.read, PLACED, 1, workers=[address_a], pure=False).result()


def test_worker_killed_mid_task_is_retried_and_its_host_leaks_nothing(cluster, tmp_path):
    client, instance = cluster["client"], cluster["instances"]["hostA"]
    sd.publish(client, 80, "pinned", {i: bytes([i]) * 5000 for i in range(1, 9)})
    daemon = host.ready_pid(instance)
    address = _addresses(client, "hostA")[0]
    marker = tmp_path / "killed"
    result = client.submit(tasks.read_then_die_once, str(marker), 80, 3, workers=[address],
                           allow_other_workers=True, pure=False).result(START)
    killed = int(marker.read_text())
    assert result["pid"] != killed, "Dask retried the task in another worker process"
    assert host.ready_pid(instance) == daemon, "the host's instance outlived the worker"
    # The other workers kept reading; the dead one's reader slot and pins were dropped ...
    _wait_workers(client, "hostA", 2)
    assert all(r["generation"] >= 1 for r in client.run(tasks.read, 80, 3).values())
    wait_for(lambda: killed not in _readers_and_pins(instance)[0], 10, "the dead reader's slot reaped")
    _, pins, _ = _readers_and_pins(instance)
    assert not [p for p in pins if p["pid"] == killed]
    # ... so a new generation frees the old one's blocks: nothing retains them.
    used = _readers_and_pins(instance)[2]["used_bytes"]
    sd.publish(client, 80, "pinned", {i: bytes([i + 1]) * 5000 for i in range(1, 9)})
    wait_for(lambda: _readers_and_pins(instance)[2]["used_bytes"] == used, 10, "superseded blocks freed")


def test_a_late_host_catches_up_and_a_lost_host_moves_its_tasks_to_the_others(cluster):
    client, instances = cluster["client"], cluster["instances"]
    generation = sd.publish(client, 81, "before-c", {1: b"c"})
    late = SimulatedHost(cluster["local"].scheduler_address, "hostC", 1)
    cluster["hosts"]["hostC"] = late
    (address_c,) = _wait_workers(client, "hostC", 1)
    # Its first task already sees the cluster's generations, published or loaded at start.
    assert client.submit(tasks.generation, 81, workers=[address_c], pure=False).result() == ("hostC", generation)
    expect = client.submit(tasks.generation, 1, workers=[_addresses(client, "hostA")[0]], pure=False).result()[1]
    assert client.submit(tasks.generation, 1, workers=[address_c], pure=False).result() == ("hostC", expect)
    # Lose host C while a task runs there: Dask runs it again on the hosts that remain.
    running = client.submit(tasks.slow_read_on, "hostC", 60.0, 81, 1, workers=[address_c], allow_other_workers=True,
                            pure=False)
    wait_for(lambda: running.key in {k for ks in client.processing([address_c]).values() for k in ks},
             START, "the slow task running on host C")
    late.kill()
    del cluster["hosts"]["hostC"]
    futures = [client.submit(tasks.read, 81, 1, pure=False) for _ in range(4)]
    assert {r["host"] for r in client.gather(futures)} <= {"hostA", "hostB"}
    moved = running.result(START)
    assert moved["host"] in ("hostA", "hostB") and moved["generation"] == generation
    # Its daemon saw every lease close with the dead Nannies and took the instance down.
    wait_for(lambda: gone(instances["hostC"]), 20, "the lost host's instance gone")


def test_a_killed_host_daemon_is_restarted_and_catches_up(cluster):
    client, instance = cluster["client"], cluster["instances"]["hostB"]
    generation = sd.publish(client, 82, "survivor", {1: b"still here"})
    old = host.ready_pid(instance)
    os.kill(old, signal.SIGKILL)
    # The Nanny's lease watcher starts a new daemon, which sweeps the dead one's objects and
    # catches up from the store; the worker's reader() re-attaches to it.
    wait_for(lambda: host.ready_pid(instance) not in (None, old), START, "a new daemon")
    (address_b,) = _addresses(client, "hostB")
    got = client.submit(tasks.read, 82, 1, workers=[address_b], pure=False).result()
    assert (got["generation"], got["content"]) == (generation, b"still here")
    # Placement survives the restart: the new daemon serves the placed dimension, the worker
    # still has the resource.
    placed = sd.publish(client, PLACED, "big", {1: b"placed again"})
    got = client.submit(tasks.read, PLACED, 1, resources={sd.resource(PLACED): 1}, pure=False).result()
    assert (got["host"], got["generation"], got["content"]) == ("hostB", placed, b"placed again")


def test_reader_outside_a_served_host_is_a_typed_error(monkeypatch):
    monkeypatch.setenv(sd.HOST_ENV, f"nowhere-{secrets.token_hex(4)}")
    with pytest.raises(AttachError) as err:
        sd.reader()
    assert "no ShmpoolPlugin serves host" in str(err.value)
    with pytest.raises(InvalidArgument):
        sd.ShmpoolPlugin("bad.name")
    with pytest.raises(InvalidArgument):
        sd.ShmpoolPlugin("ok", data_dir="/no/such/folder")


class LoneCluster:
    """A cluster of a test's own (shutting down or restarting the module's would disturb the
    other tests): a scheduler, host ``key``'s one ``dask worker`` process started by
    :meth:`start_host`, and the instance ``plugin`` serves there; whatever the test leaves
    running is killed and its names removed on exit."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.plugin = f"{TEST_PREFIX}{secrets.token_hex(3)}"
        self.instance = host.instance_name(self.plugin, key)
        self.local = distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None)
        self.client = distributed.Client(self.local)
        self.host: SimulatedHost | None = None

    def start_host(self) -> str:
        self.host = SimulatedHost(self.local.scheduler_address, self.key, 1)
        (address,) = _wait_workers(self.client, self.key, 1)
        return address

    def shutdown(self) -> None:
        """The client shuts the cluster down; the host's instance must go by itself."""
        self.client.shutdown()
        assert self.host is not None
        self.host.proc.wait(60)
        wait_for(lambda: gone(self.instance), 20, f"instance {self.instance} gone")

    def __enter__(self) -> "LoneCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.host is not None and self.host.proc.poll() is None:
            self.host.kill()
        self.client.close()
        self.local.close()
        pid = host.ready_pid(self.instance)
        if pid:
            os.kill(pid, signal.SIGKILL)
        cleanup(self.instance)


def test_placement_registered_after_a_worker_started_reaches_it_at_its_restart(sample_dir, tmp_path):
    """docs/cluster.md: an already running worker gets its placement resources at its next
    restart. A Nanny passes its resources only when it builds its worker process, and reuses
    that process's arguments at a restart: before, client.restart() left the worker without
    them, and a task asking for the resource waited for ever (found by the docs read-through).
    And publish after client.restart(): the restart clears the scheduler's metadata, where the
    Nannies' setup had named their plugins, and publish refused ("registered: []") until the
    plugin was registered again. Then the cluster's shutdown must leave nothing of the host in
    /dev/shm (a cluster of its own: shutting the module's down would end the other tests)."""
    with LoneCluster("hostE") as lone:
        client = lone.client
        lone.start_host()
        client.register_plugin(sd.ShmpoolPlugin(lone.plugin, data_dir=sample_dir, store_dir=tmp_path, linger=LINGER,
                                                placement={PLACED: ["hostE"]}))
        client.restart()
        (address,) = _wait_workers(client, "hostE", 1)
        resources = client.scheduler_info(n_workers=-1)["workers"][address]["resources"]
        assert resources.get(sd.resource(PLACED)) == sd.RESOURCE_UNITS, resources
        generation = sd.publish(client, PLACED, "big", {1: b"placed"})
        placed = client.submit(tasks.read, PLACED, 1, resources={sd.resource(PLACED): 1}, pure=False)
        assert placed.result(START)["generation"] == generation  # START only catches a hang
        assert lone.client.run(tasks.where).popitem()[1]["instance"] == lone.instance
        assert any(list_objects(lone.instance))
        lone.shutdown()
        assert not [e for e in os.listdir(SHM_DIR) if lone.plugin in e]
