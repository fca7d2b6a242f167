"""Region files served by mapping their verified copy in the region store (coordinator/region_store.py).

Real coordinators, real reader processes (tests/_mapped_children.py), real files. What a reader
reads is compared, byte for byte (sha256 per dimension), with the layers of the source files as
they were at start; a reader dying by a signal shows as a negative return code.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shmpool
from _region_data import sample_subset, settle
from shmpool.coordinator import Coordinator
from shmpool.coordinator.file_copy import RegionFile
from shmpool.coordinator.region_store import RegionStore
from shmpool.coordinator.verified import FileKey
from shmpool.data.region import Region
from shmpool.substrate.names import list_objects

FILES = 4
CHILD = str(Path(__file__).parent / "_mapped_children.py")
DEADLINE = 120  # seconds: only catches a hang, never a speed


@pytest.fixture
def data(sample_dir, tmp_path) -> Path:
    return sample_subset(sample_dir, tmp_path / "data", FILES, mode=0o644)


def _expected(folder: Path) -> dict[str, str]:
    """sha256 of every layer's bytes, per dimension, read from the source files themselves."""
    out = {}
    for path in sorted(folder.iterdir()):
        with Region.open(path) as region:
            h = hashlib.sha256()
            for layer in region.layer_ids():
                h.update(bytes(region.layer(layer)))
            out[str(region.dimension_id)] = h.hexdigest()
    return out


def _start(make_name, data: Path, **kw) -> Coordinator:
    return Coordinator(make_name(), data_dir=data, workers=0, **kw).start()


def _read_once(name: str) -> dict:
    out = subprocess.run([sys.executable, CHILD, name, "once"], capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _holder(name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, CHILD, name, "hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen[str]) -> dict:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    return json.loads(line)


def _unlocked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_a_warm_start_maps_the_store_copies_and_puts_no_region_bytes_in_shared_memory(make_name, data):
    expected = _expected(data)
    first = _start(make_name, data)
    try:
        load = first.stats()["load"]
        assert (load["files_mapped"], load["files_stored"]) == (FILES, FILES)  # made and checked now
    finally:
        first.stop()
    coord = _start(make_name, data)
    try:
        stats = coord.stats()
        load = stats["load"]
        assert (load["files_mapped"], load["files_stored"], load["files_verified"]) == (FILES, 0, 0)
        assert load["copy_ms"] == 0
        data_bytes = sum(p.stat().st_size for p in data.iterdir())
        assert stats["used_bytes"] < data_bytes // 20  # the layer indexes only
        assert _read_once(coord.name) == {"digests": expected}
        for held in coord.load_report.held:
            assert oct(held.stat.st_mode & 0o777) == oct(0o400) and not _unlocked(held.path)
    finally:
        coord.stop()
    assert all(_unlocked(held.path) for held in coord.load_report.held)  # stop lets go of them


def test_a_source_truncated_replaced_rewritten_or_removed_after_start_never_reaches_a_reader(make_name, data):
    expected = _expected(data)
    files = sorted(data.iterdir())
    coord = _start(make_name, data)
    try:
        assert coord.stats()["load"]["files_mapped"] == FILES
        holder = _holder(coord.name)
        try:
            assert _line(holder) == {"digests": expected}
            os.truncate(files[0], 100)                          # shrunk in place: a SIGBUS if it were mapped
            garbage = data / "garbage.tmp"
            garbage.write_bytes(os.urandom(files[1].stat().st_size))
            os.replace(garbage, files[1])                      # replaced by another inode
            os.chmod(files[2], 0o666)                          # made writable by all, then rewritten in place
            with open(files[2], "r+b") as f:
                f.seek(-64, os.SEEK_END)
                f.write(b"\xff" * 64)
            files[3].unlink()                                  # removed
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert _line(holder) == {"digests": expected}      # the contexts it held
            assert _line(holder) == {"digests": expected}      # every layer looked up again
            assert holder.wait(DEADLINE) == 0                  # no signal death
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert _read_once(coord.name) == {"digests": expected}  # a reader that came after the damage
    finally:
        coord.stop()


def test_a_store_copy_replaced_or_made_writable_is_refused_with_a_typed_error_and_made_again(make_name, data):
    expected = _expected(data)
    coord = _start(make_name, data)
    try:
        copies = sorted(held.path for held in coord.load_report.held)
        assert len(copies) == FILES
        os.chmod(copies[0], 0o600)  # our own uid, on purpose: what it takes before it could write it
        result = _read_once(coord.name)
        assert result["error"] == "MappedFileChanged" and "mode 0600" in result["message"], result
        os.chmod(copies[0], 0o400)
        other = copies[1].with_suffix(".other")
        shutil.copyfile(copies[1], other)
        os.chmod(other, 0o400)
        os.replace(other, copies[1])  # the same bytes, another inode: not the file that was published
        result = _read_once(coord.name)
        assert result["error"] == "MappedFileChanged" and "another file now" in result["message"], result
    finally:
        coord.stop()
    os.chmod(copies[1], 0o600)  # a copy that is not safe to map is removed and made again
    again = _start(make_name, data)
    try:
        load = again.stats()["load"]
        assert (load["files_mapped"], load["files_stored"]) == (FILES, 1)
        assert _read_once(again.name) == {"digests": expected}
    finally:
        again.stop()


def test_files_of_another_owner_or_writable_by_group_are_copied_into_the_pools_as_before(make_name, data):
    files = sorted(data.iterdir())
    os.chmod(files[0], 0o664)
    foreign = os.geteuid() == 0
    if foreign:
        os.chown(files[1], 12345, 12345)
    settle(data)
    expected = _expected(data)
    coord = _start(make_name, data, verify_cache=False)
    try:
        report = coord.load_report
        copied = {str(files[0])} | ({str(files[1])} if foreign else set())
        assert set(report.verified) == copied  # checked in full, in shared memory, every start
        assert set(report.mapped) == {str(p) for p in files} - copied
        assert _read_once(coord.name) == {"digests": expected}
    finally:
        coord.stop()


def test_mapped_regions_off_copies_every_file_as_before(make_name, data):
    coord = _start(make_name, data, mapped_regions=False, verify_cache=False)
    try:
        assert coord.load_report.mapped == [] and len(coord.load_report.verified) == FILES
        assert coord.stats()["used_bytes"] >= sum(p.stat().st_size for p in data.iterdir())
        assert _read_once(coord.name) == {"digests": _expected(data)}
    finally:
        coord.stop()


def test_an_edit_of_a_mapped_dimension_keeps_its_unchanged_layers_in_the_file(make_name, data):
    expected = _expected(data)
    coord = _start(make_name, data)
    try:
        dim = min(int(d) for d in expected)
        with shmpool.attach(coord.name) as reader:
            ids = reader.layer_ids(dim)
        proto = coord.edit_dimension(dim)
        proto.add_layer(ids[0], "replaced", frequency=1.0)
        assert coord.crystallize(dim) == 2
        with shmpool.attach(coord.name) as reader:
            assert bytes(reader.load_layer_context(dim, ids[0]).content) == b"replaced"
            with Region.open(sorted(data.iterdir())[0]) as region:
                for layer in ids[1:]:
                    assert bytes(reader.load_layer_context(dim, layer).content) == bytes(region.layer(layer))
    finally:
        coord.stop()


_CRASH = """
import sys, time
from shmpool.coordinator import Coordinator
c = Coordinator(sys.argv[1], data_dir=sys.argv[2], workers=0).start()
print(" ".join(str(h.path) for h in c.load_report.held), flush=True)
if sys.argv[3] == "hang":
    time.sleep(600)
"""


@pytest.mark.parametrize("end", ["forgotten_stop", "sigkill"])
def test_nothing_stays_locked_or_in_dev_shm_after_a_crash_or_a_forgotten_stop(make_name, data, end):
    name = make_name()
    proc = subprocess.Popen([sys.executable, "-c", _CRASH, name, str(data), "hang" if end == "sigkill" else "exit"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        copies = [Path(p) for p in proc.stdout.readline().split()]
        assert len(copies) == FILES
        if end == "sigkill":
            assert not any(_unlocked(p) for p in copies)  # held while it serves
            proc.send_signal(signal.SIGKILL)
        proc.wait(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert all(_unlocked(p) for p in copies)  # the kernel let go of its locks: prunable again
    if end == "forgotten_stop":
        assert list_objects(name) == ([], [])
    again = Coordinator(name, data_dir=data, workers=0).start()  # sweeps what a SIGKILL left in /dev/shm
    try:
        assert again.stats()["load"]["files_mapped"] == FILES
    finally:
        again.stop()
    assert list_objects(name) == ([], [])


def test_the_store_keeps_unused_copies_within_its_budget_and_never_removes_one_in_use(data, tmp_path):
    folder = tmp_path / "store"
    store = RegionStore(folder, max_bytes=0)

    def check(view: memoryview) -> None:
        with Region.from_buffer(view, source="copy", verify_checksums=True):
            pass

    made = []
    for path in sorted(data.iterdir())[:2]:
        with RegionFile.open(path) as src:
            stored = store.add(src, FileKey.of(src.stat, src.header.meta_crc), check)
            assert stored is not None
            made.append(stored)
    made[0].close()
    (folder / ".tmp-killed.region").write_bytes(b"left by a killed copy")
    store.prune()
    assert sorted(folder.iterdir()) == [made[1].path]
    made[1].close()


def test_a_lookup_is_a_read_only_view_into_the_readers_mapping_of_the_store_copy(make_name, data):
    coord = _start(make_name, data)
    try:
        with shmpool.attach(coord.name) as reader:
            dim = min(reader.dimensions())
            ctx = reader.load_layer_context(dim, reader.layer_ids(dim)[3])
            assert isinstance(ctx.content, memoryview) and ctx.content.readonly
            address = np.frombuffer(ctx.content, dtype=np.uint8).__array_interface__["data"][0]
            inside = []
            inst = reader._inst
            for mapped in (inst.pool_segment(len(inst.pool_segments) + f)  # the file rows this reader mapped
                           for f, mm in enumerate(inst._files) if mm is not None):
                base = np.frombuffer(mapped.mm, dtype=np.uint8, count=1).__array_interface__["data"][0]
                if base <= address < base + mapped.size:
                    inside.append((mapped, address - base))
            [(mapped, offset)] = inside  # no copy: the bytes are the mapping's own
            with open(mapped.name, "rb") as f:
                f.seek(offset)
                assert f.read(len(ctx.content)) == bytes(ctx.content)
            with pytest.raises(TypeError):
                ctx.content[0] = 1
            del ctx
    finally:
        coord.stop()


def test_a_clean_stop_removes_the_temporaries_of_copies_killed_half_way(make_name, data):
    from shmpool.substrate.mapped_files import store_dir

    store_dir().mkdir(mode=0o700, exist_ok=True)
    killed = store_dir() / ".tmp-killed-half-way.region"
    killed.write_bytes(b"a copy whose coordinator was SIGKILLed mid-copy")
    coord = _start(make_name, data)
    try:
        assert coord.stats()["load"]["files_mapped"] == FILES
    finally:
        coord.stop()
    assert not killed.exists()


def test_a_store_copy_damaged_between_starts_is_never_served_and_the_file_is_copied(make_name, data):
    expected = _expected(data)
    first = _start(make_name, data)
    copies = sorted(held.path for held in first.load_report.held)
    first.stop()
    victim = copies[0]
    os.chmod(victim, 0o600)
    with open(victim, "r+b") as f:  # a byte of its name: covered by the header's metadata CRC
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(bytes([byte[0] ^ 0x20]))
    os.chmod(victim, 0o400)  # as safe to map as ever, by its stat
    coord = _start(make_name, data, verify_cache=False)
    try:
        load = coord.stats()["load"]
        assert (load["files_mapped"], load["files_verified"]) == (FILES - 1, 1)  # copied and checked instead
        assert not victim.exists()  # removed, so the next start makes it again
        assert _read_once(coord.name) == {"digests": expected}
    finally:
        coord.stop()
