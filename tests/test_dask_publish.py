"""A cluster publish reaches every host or leaves no trace (shmpool.dask.publish).

Two simulated hosts of one worker each, a 32 MiB memory limit per host instance, and a
dimension placed on host B only, so B can be made too full for a publication A can take.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import _dask_tasks as tasks  # noqa: E402
from _dask_hosts import addresses, host_stats, hosts_cluster, plugin_name, stop_instances  # noqa: E402
from _waiting import wait_for  # noqa: E402
from shmpool import _dask_host as host  # noqa: E402
from shmpool import _dask_publish as publishing  # noqa: E402
from shmpool import dask as sd  # noqa: E402
from shmpool.data.region_builder import RegionBuilder  # noqa: E402
from shmpool.errors import GenerationNotNewer, LimitExceeded  # noqa: E402

pytestmark = pytest.mark.dask

MiB = 1 << 20
LIMIT = 32 * MiB
PLACED = 60  # served by host B only


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    plugin = plugin_name()
    store, empty = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("empty")
    instances = {k: host.instance_name(plugin, k) for k in ("hostA", "hostB")}
    with hosts_cluster({"hostA": 1, "hostB": 1}) as client:
        client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=empty, store_dir=store, linger=1.0,
                                                memory_limit=LIMIT, placement={PLACED: ["hostB"]}))
        yield {"client": client, "plugin": plugin, "store": Path(store), "instances": instances}
    assert not stop_instances(*instances.values()), "host instances left after the cluster closed"


def _store(store: Path, dim: int) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith(f"d{dim}."))


def _log_size(instance: str) -> int:
    return host.log_path(instance).stat().st_size


def test_a_publish_one_host_cannot_take_leaves_every_host_and_the_store_unchanged(cluster):
    client, store, inst = cluster["client"], cluster["store"], cluster["instances"]
    first = sd.publish(client, 50, "rollback", {1: b"old"})
    sd.publish(client, PLACED, "filler", {1: bytes(20 * MiB)})  # host B: 20 of 32 MiB taken
    before_files = _store(store, 50)
    used_a = host_stats(inst["hostA"])["used_bytes"]
    logs = {k: _log_size(i) for k, i in inst.items()}
    with pytest.raises(LimitExceeded) as err:
        sd.publish(client, 50, "rollback", {1: bytes(14 * MiB)})  # fits on A, not on B
    assert err.value.limit == LIMIT and err.value.requested > 14 * MiB  # B's own error, typed
    # No trace: the store holds what it held (no new or pending file), both hosts still serve
    # the first generation, A let go of the room it held for the new one.
    assert _store(store, 50) == before_files == [host.store_file(store, 50, first).name]
    assert set(client.run(tasks.generation, 50).values()) == {("hostA", first), ("hostB", first)}
    assert {r["content"] for r in client.run(tasks.read, 50, 1).values()} == {b"old"}
    wait_for(lambda: host_stats(inst["hostA"])["used_bytes"] == used_a, 60, "host A's reserved room freed")
    # Nothing retries it: no daemon logs a thing about it, and the next publish that fits takes
    # the very generation number the failed one would have had.
    for key, instance in inst.items():
        with open(host.log_path(instance), "rb") as log:
            log.seek(logs[key])
            assert b"Traceback" not in log.read()
    assert sd.publish(client, 50, "rollback", {1: b"new"}) == first + 1
    assert {r["content"] for r in client.run(tasks.read, 50, 1).values()} == {b"new"}
    assert _store(store, 50) == [host.store_file(store, 50, first + 1).name]


def test_a_host_that_moved_past_refuses_with_generation_not_newer_through_dask(cluster, tmp_path):
    client, plugin = cluster["client"], cluster["plugin"]
    generation = sd.publish(client, 51, "ahead", {1: b"x"})
    region = RegionBuilder(51, "stale")
    region.add_layer(1, b"y")
    path = region.write(tmp_path / "stale.region")
    (address_a,) = addresses(client, "hostA")
    # What publish's prepare step sends, with a generation the host is already at.
    with pytest.raises(GenerationNotNewer) as err:
        client.run(publishing._host_call, plugin, "prepare", 51, generation, str(path), 10.0, workers=[address_a])
    assert (err.value.dimension_id, err.value.generation, err.value.current) == (51, generation, generation)


def test_a_store_generation_too_large_for_a_host_does_not_keep_its_plugin_from_starting(tmp_path, monkeypatch):
    monkeypatch.setenv("SHMPOOL_DASK_LOG_LEVEL", "DEBUG")  # the daemon's retries show at debug only
    plugin = plugin_name()
    store, data = tmp_path / "store", tmp_path / "data"
    store.mkdir()
    data.mkdir()
    base = RegionBuilder(70, "base")
    base.add_layer(1, b"from the plugin's folder")
    base.write(data / "base.region")
    big = RegionBuilder(70, "too large")
    big.add_layer(1, bytes(40 * MiB))  # over the 32 MiB limit: LimitExceeded on every attempt
    big.write(host.store_file(store, 70, 5))
    instance = host.instance_name(plugin, "hostC")
    try:
        with hosts_cluster({"hostC": 1}) as client:
            client.register_plugin(sd.ShmpoolPlugin(plugin, data_dir=data, store_dir=store, linger=1.0,
                                                    memory_limit=LIMIT))
            # It started, and serves what it can: the plugin's own file of the dimension.
            got = client.run(tasks.read, 70, 1).popitem()[1]
            assert got["content"] == b"from the plugin's folder"
            # It retries (with back-off), and says so once, in one line.
            wait_for(lambda: "generation 5 of dimension 70 still fails" in host.log_path(instance).read_text(),
                     30, "the daemon's first retry")
            text = host.log_path(instance).read_text()
            assert text.count("cannot serve generation 5 of dimension 70") == 1, text
            assert "LimitExceeded" in text and "Traceback" not in text
            # The next publish supersedes the generation no host could take, and prunes it.
            assert sd.publish(client, 70, "fits", {1: b"small"}) == 6
            assert client.run(tasks.read, 70, 1).popitem()[1]["content"] == b"small"
            assert sorted(os.listdir(store)) == [host.store_file(store, 70, 6).name]
            assert "Traceback" not in host.log_path(instance).read_text()
    finally:
        assert not stop_instances(instance)


def test_publish_prunes_what_every_host_moved_past_and_a_dead_publishers_leftovers(cluster):
    client, store = cluster["client"], cluster["store"]
    for n in range(3):
        last = sd.publish(client, 53, "pruned", {1: bytes([n]) * 1000})
    assert _store(store, 53) == [host.store_file(store, 53, last).name]
    # A publisher killed mid-way leaves a pending file, or the temporary file behind it.
    pending = host.pending_file(store, 53, last + 1)
    pending.write_bytes(b"half")
    partial = store / f".{pending.name}.abc123.tmp"
    partial.write_bytes(b"half")
    newest = sd.publish(client, 53, "pruned", {1: b"after"})
    assert newest == last + 1  # the leftover's number is taken again, its file replaced
    assert _store(store, 53) == [host.store_file(store, 53, newest).name]
    assert not partial.exists()


def test_a_pin_holds_one_generation_across_a_map_while_a_publish_lands(cluster):
    client, store = cluster["client"], cluster["store"]
    pinned_gen = sd.publish(client, 54, "pinned", {i: f"before {i}" for i in range(1, 5)})
    with sd.pin(client, [54]) as pinned:
        assert pinned.generations == {54: pinned_gen}
        first = client.gather(client.map(tasks.read_pinned, [pinned] * 8, [54] * 8, [1, 2, 3, 4] * 2, pure=False))
        newer = sd.publish(client, 54, "pinned", {i: f"after {i}" for i in range(1, 5)})
        second = client.gather(client.map(tasks.read_pinned, [pinned] * 8, [54] * 8, [1, 2, 3, 4] * 2, pure=False))
        # Every task of the map saw the pinned generation: from shared memory before the
        # publish, from the pinned store file after it (the hosts serve the newer one).
        for results, shared in ((first, True), (second, False)):
            assert {r["generation"] for r in results} == {pinned_gen}
            assert {r["content"] for r in results} == {f"before {i}".encode() for i in range(1, 5)}
            assert all(r["verified"] and r["shared"] is shared for r in results)
        assert {r["host"] for r in first + second} == {"hostA", "hostB"}
        # Unpinned tasks see the new one; the pinned file outlives the publish that superseded it.
        assert {r["generation"] for r in client.run(tasks.read, 54, 1).values()} == {newer}
        assert host.store_file(store, 54, pinned_gen).exists()
    # Released: the next publish prunes it.
    sd.publish(client, 54, "pinned", {1: b"third"})
    assert _store(store, 54) == [host.store_file(store, 54, newer + 1).name]


def test_publish_streams_through_one_worker_when_the_client_cannot_see_the_store(cluster, monkeypatch):
    client = cluster["client"]
    monkeypatch.setattr(publishing, "_client_sees_store", lambda *args: False)
    monkeypatch.setattr(publishing, "STREAM_CHUNK", 64 << 10)  # a 300 kB region in 5 pieces
    content = {i: bytes([i]) * 60_000 for i in range(1, 6)}
    generation = sd.publish(client, 55, "streamed", content)
    got = client.run(tasks.read, 55, 3)
    assert {(r["generation"], r["content"]) for r in got.values()} == {(generation, content[3])}


def test_room_held_for_a_publisher_that_never_commits_is_let_go_after_its_ttl(cluster, tmp_path):
    instance = cluster["instances"]["hostA"]
    region = RegionBuilder(56, "orphan")
    region.add_layer(1, bytes(2 * MiB))
    path = region.write(tmp_path / "orphan.region")
    used = host_stats(instance)["used_bytes"]
    # What a publisher that died after its prepare step leaves: room held, no commit, no abort.
    reply = host.call(instance, {"op": "prepare", "dimension_id": 56, "generation": 1, "file": str(path),
                                 "ttl": 0.5})
    assert reply["reserved"] > 2 * MiB and host_stats(instance)["used_bytes"] >= used + 2 * MiB
    wait_for(lambda: host_stats(instance)["used_bytes"] == used, 60, "the held room let go")
    assert "prepared and never committed nor aborted" in host.log_path(instance).read_text()
