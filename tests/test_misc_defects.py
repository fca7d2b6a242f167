"""Defects found in the reliability review (section 5), each pinned by a test with real processes:
orphaned busy workers, cleanup of another user's objects, ids that are not ints, a keywords str,
and spill files left by a crashed run."""

from __future__ import annotations

import enum
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import posix_ipc
import pytest
from _waiting import wait_for

import _client_children
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.coordinator.capacity import CapacityPolicy
from shmpool import InvalidLayer
from shmpool.substrate._proc import is_alive
from shmpool.data.context import NavigationPath
from shmpool.substrate.names import SHM_DIR, cleanup, list_objects, runtime_dir, segment_name, semaphore_name



pytestmark = pytest.mark.usefixtures("user_jobs_importable")


# ----------------------------------------------------------------------------- worker watchdog

def test_a_worker_busy_in_a_long_job_exits_soon_after_its_coordinator_is_killed(instance_name, sample_dir,
                                                                                 tmp_path):
    from shmpool.workers.jobs import POLICY_ENV, JobPolicy
    from shmpool.workers.watchdog import EXIT_COORDINATOR_GONE

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    coord = ctx.Process(target=_client_children.coordinator_process, args=(instance_name, str(sample_dir), ready, stop))
    coord.start()
    # A second worker started by the test, so that its exit status can be read (the pool's own
    # worker is the dead coordinator's child, and init reaps it).
    extra = None
    client = None
    try:
        assert ready.wait(60)
        policy = JobPolicy.build(None, ["_jobs"]).to_json()  # as its coordinator's own workers get it
        extra = subprocess.Popen([sys.executable, "-m", "shmpool.workers.worker", instance_name, "1"],
                                 stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, POLICY_ENV: policy})
        client = shmpool.connect(instance_name)
        pid_files = [tmp_path / f"worker-{i}.pid" for i in range(2)]
        for p in pid_files:
            client.submit("_jobs:report_pid_then_sleep", str(p), 60)
        wait_for(lambda: all(p.exists() for p in pid_files), 30, "both workers busy")
        busy = sorted(int(p.read_text()) for p in pid_files)
        assert extra.pid in busy and len(set(busy)) == 2
        os.kill(coord.pid, signal.SIGKILL)
        coord.join(10)
        wait_for(lambda: not any(is_alive(pid) for pid in busy), 1.5, "busy workers gone")
        assert extra.wait(5) == EXIT_COORDINATOR_GONE
        why = extra.stderr.read()
        assert f"coordinator (pid {coord.pid})" in why and "is gone" in why, why
    finally:
        if client is not None:
            client.close()
        if coord.is_alive():
            coord.kill()
            coord.join(10)
        if extra is not None and extra.poll() is None:
            extra.kill()
            extra.wait(10)
        cleanup(instance_name)  # the coordinator died: nobody else removes its names
    assert list_objects(instance_name) == ([], [])


# ----------------------------------------------------------------------------- cleanup, foreign objects

# Imports everything the CLI needs while still root (the interpreter lives under /root, which other
# users cannot read), then becomes uid/gid argv[1] and runs ``shmpool ...`` as that user.
_AS_USER = """
import os, sys, traceback, linecache
import shmpool.coordinator.cli
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
sys.argv = ["shmpool", *sys.argv[2:]]
sys.exit(shmpool.coordinator.cli.main(sys.argv[1:]))
"""


def _make_foreign_objects(name: str, uid: int) -> list[str]:
    """A segment and a semaphore of instance ``name`` owned by ``uid``, mode 0600 (as root)."""
    seg = posix_ipc.SharedMemory(segment_name(name, "control"), posix_ipc.O_CREX, mode=0o600, size=4096)
    seg.close_fd()
    sem = posix_ipc.Semaphore(semaphore_name(name, "lock"), posix_ipc.O_CREX, mode=0o600, initial_value=1)
    sem.close()
    entries = [f"{shmpool.substrate.names.PREFIX}{name}.control", f"sem.{shmpool.substrate.names.PREFIX}{name}.lock"]
    for entry in entries:
        os.chown(SHM_DIR / entry, uid, uid)
    return entries


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: objects owned by one user, cleaned by another")
def test_cleanup_of_another_users_instance_is_one_line_not_a_traceback(instance_name):
    owner, intruder = 65534, 65533
    entries = _make_foreign_objects(instance_name, owner)
    home = tempfile.mkdtemp(prefix="shmpool-intruder-")  # a runtime dir the intruder may write
    try:
        os.chown(home, intruder, intruder)
        env = {**os.environ, "SHMPOOL_RUNTIME_DIR": home}
        result = subprocess.run([sys.executable, "-c", _AS_USER, str(intruder), "cleanup", instance_name],
                                capture_output=True, text=True, timeout=60, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        line = lines[0]
        assert segment_name(instance_name, "control") in line and semaphore_name(instance_name, "lock") in line
        assert "permission denied" in line and f"owned by uid {owner}" in line and f"uid {intruder}" in line
        assert all((SHM_DIR / e).exists() for e in entries), "nothing of another user may go"
    finally:
        shutil.rmtree(home, ignore_errors=True)
        for entry in entries:  # cleanup() leaves another user's objects alone, even as root
            (SHM_DIR / entry).unlink(missing_ok=True)
    assert list_objects(instance_name) == ([], [])


# ----------------------------------------------------------------------------- ids are ints

@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_dir):
    import secrets

    from conftest import TEST_PREFIX
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with Coordinator(name, data_dir=sample_dir, workers=1) as coord:
        with shmpool.connect(name) as client:
            yield coord, client
    assert list_objects(name) == ([], [])


BAD_IDS = [True, False, np.bool_(True), 3.0, np.float64(3), b"3", None]  # a str is a key or a name (issue 23)


@pytest.mark.parametrize("bad", BAD_IDS, ids=[repr(b) for b in BAD_IDS])
def test_lookup_ids_that_are_not_integers_are_a_type_error_naming_the_argument(served, bad):
    _, client = served
    reader = client.reader
    reader.load_layer_context(1, 17)  # dimension 1 mapped: a bool must not find it in the cache
    for args, argument in (((bad, 17), "dimension_id"), ((3, bad), "layer_id")):
        with pytest.raises(TypeError) as err:
            reader.load_layer_context(*args)
        assert isinstance(err.value, shmpool.ShmPoolError)
        assert err.value.argument == argument and argument in str(err.value)
        assert type(bad).__name__ in str(err.value)
        with pytest.raises(TypeError, match=argument):
            reader.load_contexts([args])
        with pytest.raises(TypeError, match=argument):
            NavigationPath([args])
        with pytest.raises(TypeError, match=argument):
            client.lookup(*args, timeout=10)
    for call in (lambda d: list(reader.scan(d)), reader.generation, reader.layer_ids):
        with pytest.raises(TypeError, match="dimension_id"):
            call(bad)


def test_numpy_integer_ids_are_accepted_and_come_back_as_ints(served):
    _, client = served
    reader = client.reader
    for dim, layer in ((np.int64(3), np.int64(4)), (np.int32(3), np.uint16(4)), (3, np.uint64(4))):
        ctx = reader.load_layer_context(dim, layer)
        assert (ctx.dimension_id, ctx.layer_id) == (3, 4)
        assert type(ctx.dimension_id) is int and type(ctx.layer_id) is int
        assert bytes(ctx.content) == bytes(reader.load_layer_context(3, 4).content)
        [got] = reader.load_contexts([(dim, layer)])
        assert (type(got.dimension_id), type(got.layer_id)) == (int, int)
        assert client.lookup(dim, layer, timeout=10).layer_id == 4
    class Dimension(enum.IntEnum):  # an int subclass that is not a bool is an int
        TEMPORAL = 3

    assert type(reader.load_layer_context(Dimension.TEMPORAL, 4).dimension_id) is int
    assert list(NavigationPath([(np.int8(1), np.int64(2))])) == [(1, 2)]
    assert reader.layer_ids(np.int16(5)) == reader.layer_ids(5)


def test_proto_dimension_ids_are_checked_like_reader_ids(served):
    coord, _ = served
    for bad in (True, 2.0, np.bool_(False)):
        with pytest.raises(TypeError, match="dimension_id"):
            coord.create_proto_dimension(bad, "x")
        with pytest.raises(TypeError, match="dimension_id"):
            coord.load_layer_context(bad, 1)
        with pytest.raises(TypeError, match="dimension_id"):
            coord.proto(bad)
    proto = coord.create_proto_dimension(np.int64(901), "ids")
    try:
        assert type(proto.dimension_id) is int and coord.proto(901) is proto
        proto.add_layer(np.int32(1), "one")
        for bad in (True, 1.0):
            with pytest.raises(TypeError, match="layer_id"):
                proto.add_layer(bad, "bad")
            with pytest.raises(TypeError, match="layer_id"):
                proto.load_layer_context(bad)
            with pytest.raises(TypeError, match="layer_id"):
                proto.remove_layer(bad)
        assert proto.layer_ids() == [1] and type(proto.layer_ids()[0]) is int
        assert coord.load_layer_context(901, np.int64(1)).text == "one"
    finally:
        coord._protos.pop(901, None)


# ----------------------------------------------------------------------------- keywords str

def test_a_keywords_str_is_an_invalid_layer_not_one_keyword_per_character(served):
    coord, _ = served
    proto = coord.create_proto_dimension(902, "kw")
    try:
        for keywords in ("abc", b"abc"):
            with pytest.raises(InvalidLayer) as err:
                proto.add_layer(5, "text", keywords=keywords)
            e = err.value
            assert (e.dimension_id, e.layer_id) == (902, 5)
            assert "keywords must be a list of strings" in str(e) and "dimension 902" in str(e)
        assert len(proto) == 0
        proto.add_layer(5, "text", keywords=(k for k in ["river", "stone"]))  # any iterable of str
        assert proto.load_layer_context(5).keywords == ("river", "stone")
        builder = proto.builder
        with pytest.raises(InvalidLayer, match="keywords must be a list of strings"):
            builder.add_layer(6, "text", keywords="abc")
    finally:
        coord._protos.pop(902, None)


# ----------------------------------------------------------------------------- spill leftovers

def _spill_leftovers(folder: Path, name: str) -> dict[str, Path]:
    """Files as a crashed run of ``name`` leaves them, and files that are not ours."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "spill": folder / f"{name}.dim-00007-gen3.region",
        "temp": folder / f".{name}.dim-00007-gen4.region.k2j3h4.tmp",
        "other_instance": folder / "someone-else.dim-00007-gen3.region",
        "user": folder / "notes.txt",
        "user_region": folder / "dim-00007-gen3.region",
    }
    for path in files.values():
        path.write_bytes(b"left over")
    return files


@pytest.mark.parametrize("where", ["explicit", "default"])
def test_spill_files_of_a_previous_run_are_removed_at_start_and_only_those(instance_name, sample_dir, tmp_path,
                                                                           where):
    folder = tmp_path / "spill" if where == "explicit" else runtime_dir() / f"{instance_name}.spill"
    policy = CapacityPolicy(spill_dir=folder) if where == "explicit" else CapacityPolicy()
    files = _spill_leftovers(folder, instance_name)
    try:
        with Coordinator(instance_name, data_dir=sample_dir, workers=0, capacity=policy) as coord:
            assert coord._capacity.spill_dir == folder
            assert not files["spill"].exists() and not files["temp"].exists()
            kept = [files[k] for k in ("other_instance", "user", "user_region")]
            assert all(p.read_bytes() == b"left over" for p in kept)
            # A spill of this run is gone after a clean stop too: nothing can reload it then.
            files["spill"].write_bytes(b"spilled while running")
        assert not files["spill"].exists()
        assert all(p.exists() for p in kept)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
