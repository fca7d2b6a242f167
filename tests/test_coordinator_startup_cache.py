"""Start-up's validation cache: unchanged verified files skip content checks, nothing else does.

Real coordinators on real files; whether content was checked is read from the load report
(``verified`` / ``trusted``) and the cache's counters, never from timing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger

import shmpool
from _region_data import sample_subset, settle
from _startup_cache_children import start_and_stop
from shmpool.coordinator import Coordinator
from shmpool.coordinator.verified import MAX_RECORDS, RACY_NS, FileKey, VerifiedFiles
from shmpool.data.region_builder import RegionBuilder

FILES = 3


@pytest.fixture
def warnings():
    messages: list[str] = []
    for package in ("shmpool", "coordinator"):
        logger.enable(package)
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)
    for package in ("shmpool", "coordinator"):
        logger.disable(package)


@pytest.fixture
def data(sample_dir, tmp_path) -> Path:
    return sample_subset(sample_dir, tmp_path / "data", FILES)


@pytest.fixture
def cache_path(tmp_path) -> Path:
    return tmp_path / "cache" / "verified.json"


@pytest.fixture(autouse=True)
def _cache_folder(cache_path):
    cache_path.parent.mkdir(mode=0o700)


def _start(make_name, data: Path, cache_path: Path, **kw) -> Coordinator:
    # The validation cache serves the copy path; mapped regions (the default) are checked when
    # their store copy is made (tests/test_coordinator_mapped_regions.py).
    return Coordinator(make_name(), data_dir=data, workers=0, verify_cache=cache_path, mapped_regions=False,
                       **kw).start()


def _loads(make_name, data, cache_path) -> tuple[list[str], list[str], dict]:
    coord = _start(make_name, data, cache_path)
    try:
        with shmpool.attach(coord.name) as reader:  # whatever was trusted still reads back intact
            for dim in reader.dimensions():
                assert all(ctx.verify() for ctx in reader.scan(dim))
        report = coord.load_report
        return sorted(report.verified), sorted(report.trusted), coord.stats()["load"]
    finally:
        coord.stop()


def test_second_start_trusts_unchanged_files_and_skips_their_content_checks(make_name, data, cache_path):
    verified, trusted, load = _loads(make_name, data, cache_path)
    files = sorted(str(p) for p in data.iterdir())
    assert verified == files and trusted == []
    assert load["verify_cache"]["recorded"] == FILES and load["verify_cache"]["misses"] == FILES
    assert stat.S_IMODE(cache_path.stat().st_mode) == 0o600

    verified, trusted, load = _loads(make_name, data, cache_path)
    assert verified == [] and trusted == files
    assert load["verify_cache"]["hits"] == FILES and load["files_trusted"] == FILES
    assert load["verify_ms"] == 0


def test_a_flipped_content_byte_is_caught_even_with_size_and_mtime_put_back(make_name, data, cache_path, warnings):
    _loads(make_name, data, cache_path)
    victim = sorted(data.iterdir())[1]
    st = victim.stat()
    with open(victim, "r+b") as f:  # in place: same inode, same size
        f.seek(st.st_size - 100)
        byte = f.read(1)
        f.seek(st.st_size - 100)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = victim.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert after.st_ctime_ns != st.st_ctime_ns  # the stamp nobody can set back

    coord = _start(make_name, data, cache_path)
    try:
        skipped = dict(coord.load_report.skipped)
        assert list(skipped) == [str(victim)]
        assert "checksum mismatch" in skipped[str(victim)]
        assert len(coord.load_report.trusted) == FILES - 1
        assert any(str(victim) in w for w in warnings)
    finally:
        coord.stop()


def test_a_replaced_file_is_verified_again(make_name, data, cache_path):
    _loads(make_name, data, cache_path)
    victim = sorted(data.iterdir())[0]
    builder = RegionBuilder(1, "replaced")
    builder.add_layer(7, "new text")
    builder.write(victim)  # os.replace: a new inode
    settle(data)
    verified, trusted, _ = _loads(make_name, data, cache_path)
    assert verified == [str(victim)] and len(trusted) == FILES - 1
    verified, trusted, _ = _loads(make_name, data, cache_path)
    assert verified == [] and len(trusted) == FILES


def _forge_from_real(cache_path: Path) -> dict:
    return json.loads(cache_path.read_bytes())


@pytest.mark.parametrize("damage", ["loose mode", "symlink", "garbage", "deeply nested", "wrong shape",
                                    "wrong types", "foreign owner"])
def test_an_untrustworthy_cache_is_ignored_and_everything_verified(make_name, data, cache_path, tmp_path, damage, warnings):
    _loads(make_name, data, cache_path)
    doc = _forge_from_real(cache_path)
    if damage == "loose mode":
        cache_path.chmod(0o666)
    elif damage == "symlink":
        real = tmp_path / "elsewhere.json"
        shutil.copyfile(cache_path, real)
        real.chmod(0o600)
        cache_path.unlink()
        cache_path.symlink_to(real)
    elif damage == "garbage":
        cache_path.write_bytes(b"\x80\x04not json at all")
    elif damage == "deeply nested":
        cache_path.write_text("[" * 200_000 + "]" * 200_000)
    elif damage == "wrong shape":
        cache_path.write_text(json.dumps([doc]))
    elif damage == "wrong types":
        for record in doc["records"].values():
            record["key"] = [str(k) for k in record["key"]]
        cache_path.write_text(json.dumps(doc))
    elif damage == "foreign owner":
        if os.geteuid() != 0:
            pytest.skip("only root can give a file away")
        os.chown(cache_path, 4321, 4321)
    verified, trusted, load = _loads(make_name, data, cache_path)
    assert len(verified) == FILES and trusted == []
    assert load["verify_cache"]["ignored"]
    assert any("validation cache" in w and "ignored" in w for w in warnings)
    # The next save replaced it with a trustworthy file of ours.
    st = os.stat(cache_path, follow_symlinks=False)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    verified, trusted, _ = _loads(make_name, data, cache_path)
    assert verified == [] and len(trusted) == FILES


def test_a_record_for_other_bytes_of_the_same_path_is_not_trusted(make_name, data, cache_path):
    _loads(make_name, data, cache_path)
    doc = _forge_from_real(cache_path)
    for record in doc["records"].values():
        record["key"][5] ^= 1  # another header CRC: another index
    cache_path.write_text(json.dumps(doc))
    verified, trusted, load = _loads(make_name, data, cache_path)
    assert len(verified) == FILES and trusted == [] and load["verify_cache"]["hits"] == 0


def test_disabled_cache_verifies_every_time_and_writes_nothing(make_name, data, cache_path):
    for _ in range(2):
        with Coordinator(make_name(), data_dir=data, workers=0, verify_cache=False, mapped_regions=False) as coord:
            assert len(coord.load_report.verified) == FILES and coord.stats()["load"]["verify_cache"] is None
    assert not cache_path.exists()


def test_a_file_changed_in_the_last_tick_is_verified_but_not_recorded(tmp_path, cache_path):
    path = tmp_path / "x.region"
    path.write_bytes(b"x")
    st = path.stat()
    key = FileKey.of(st, 0)
    cache = VerifiedFiles.load(cache_path)
    assert not cache.record(str(path), key, verified_ns=st.st_ctime_ns + RACY_NS // 2)
    coarse = key._replace(ctime_ns=st.st_ctime_ns // 10**9 * 10**9)  # a whole-second file system
    assert not cache.record(str(path), coarse, verified_ns=coarse.ctime_ns + 10 * RACY_NS)
    assert cache.record(str(path), key, verified_ns=st.st_ctime_ns + 2 * RACY_NS)
    assert cache.recorded == 1


def test_the_cache_keeps_only_live_records_and_at_most_max_records(make_name, data, cache_path, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    records = {}
    for i in range(MAX_RECORDS + 20):
        path = many / f"f{i:05d}"
        path.touch()
        records[str(path)] = {"key": list(FileKey.of(path.stat(), 0)), "verified_ns": i}
    for i in range(5):
        records[str(tmp_path / f"gone{i}")] = {"key": [1, 2, 3, 4, 5, 6], "verified_ns": 10**18}
    cache_path.write_text(json.dumps({"format": 1, "records": records}))
    cache_path.chmod(0o600)
    (many / "f00999").write_bytes(b"changed")  # no longer the file recorded

    verified, _, _ = _loads(make_name, data, cache_path)
    kept = json.loads(cache_path.read_bytes())["records"]
    assert len(kept) == MAX_RECORDS
    assert set(verified) <= set(kept)  # the newest records win
    assert not any("gone" in p for p in kept) and str(many / "f00999") not in kept
    assert str(many / "f00000") not in kept  # the oldest were pruned


def test_coordinators_starting_at_once_merge_their_records(make_name, sample_dir, tmp_path, cache_path):
    folders = []
    for k in range(3):
        folder = tmp_path / f"data{k}"
        folder.mkdir()
        for path in sorted(sample_dir.iterdir())[k * 2:k * 2 + 2]:
            shutil.copyfile(path, folder / path.name)
        folders.append(folder)
    for folder in folders:
        settle(folder)
    ctx = mp.get_context("spawn")
    for _ in range(3):  # fresh cache each round: every coordinator saves, all at about the same time
        cache_path.unlink(missing_ok=True)
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=start_and_stop, args=(make_name(), str(f), str(cache_path), go, out))
                 for f in folders + folders[:1]]  # two of them on the same folder
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        results = [out.get(timeout=10) for _ in procs]
        assert all(skipped == 0 for _, _, skipped in results)
        kept = json.loads(cache_path.read_bytes())["records"]
        assert set(kept) == {str(p) for f in folders for p in f.iterdir()}
    assert not list(cache_path.parent.glob("*.tmp"))


KILLED_SAVE = """
import sys
from shmpool.coordinator import Coordinator
Coordinator(sys.argv[1], data_dir=sys.argv[2], workers=0, verify_cache=sys.argv[3], mapped_regions=False).start()
"""


def test_a_save_killed_before_its_rename_leaves_the_old_cache_and_its_temporary_is_swept(
        make_name, data, cache_path):
    name = make_name()
    env = dict(os.environ, SHMPOOL_FAULT="verified.written")
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, name, str(data), str(cache_path)], env=env,
                          cwd=Path(__file__).parent.parent, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    shmpool.cleanup(name)  # the killed coordinator's segments
    assert not cache_path.exists() and len(list(cache_path.parent.glob("*.tmp"))) == 1
    verified, _, load = _loads(make_name, data, cache_path)
    assert len(verified) == FILES and load["verify_cache"]["ignored"] is None
    assert not list(cache_path.parent.glob("*.tmp"))
    assert len(_loads(make_name, data, cache_path)[1]) == FILES


BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench_startup.py"


def test_bench_startup_runs_every_mode_and_leaves_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--rounds", "1", "--no-save"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert set(doc["modes"]) == {"cold", "warm", "warm_copy", "off"}
    for mode in doc["modes"].values():
        assert {"start_ms", "start_cpu_ms", "load_ms", "copy_ms", "verify_ms", "store_ms", "shm_used_bytes"} == set(mode)
    modes = doc["modes"]
    assert modes["warm_copy"]["verify_ms"]["median"] == 0 < modes["off"]["verify_ms"]["median"]
    assert modes["warm"]["store_ms"]["median"] == 0 < modes["cold"]["store_ms"]["median"]
    assert modes["warm"]["shm_used_bytes"]["median"] < doc["bytes"] // 20 < modes["warm_copy"]["shm_used_bytes"]["median"]
    assert set(doc["floors"]) == {"sendfile_into_tmpfs_ms", "sealed_memfd_copy_ms", "open_check_map_ms"}
    assert doc["leftovers_in_dev_shm"] == [] and isinstance(doc["warm_median_met"], bool)
    assert doc["target_ms"] == 15.0 and "warm_over_warm_copy_median" in doc["ratios"]
