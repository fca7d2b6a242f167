"""A region file truncated in place while the coordinator reads it is a typed error, not a SIGBUS.

``publish_region_file`` and the reload of an evicted dimension used to map the file
(Region.open) and copy from the mapping; ``cp new.region data/x.region`` and ``> x.region``
truncate the file in place before writing it, and a read of a mapped page past the new end is a
SIGBUS: the coordinator died (4 of 4 runs of the publish case below, exit -7). Start-up never
mapped files (coordinator/file_copy.py copies through the descriptor and notices a shrink);
both paths now place files the same way (coordinator/loading.py, place_file).

The coordinator runs in a child process (a SIGBUS would take pytest with it); the parent
truncates the file as soon as the child says it is about to read it. Either outcome but death is
right: a typed error (the file shrank, or is too short at open) or, had the copy won the race, a
publication. The timeouts only catch a hang.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shmpool.data.region_builder import RegionBuilder

MiB = 1024 * 1024
HANG = 120.0  # seconds: only a hang takes this long

PUBLISH = textwrap.dedent("""
    import sys
    from shmpool.coordinator import Coordinator
    from shmpool.errors import ShmPoolError
    name, path = sys.argv[1:3]
    with Coordinator(name, workers=0, memory_limit=512 << 20, mapped_regions=False) as coord:
        print("go", flush=True)
        try:
            coord.publish_region_file(path)
            print("published", flush=True)
        except ShmPoolError as exc:
            print("typed", type(exc).__name__, flush=True)
""")

RELOAD = textwrap.dedent("""
    import sys, time
    from shmpool.coordinator import Coordinator
    from shmpool.errors import ShmPoolError
    name, folder = sys.argv[1:3]
    with Coordinator(name, data_dir=folder, workers=0, memory_limit=128 << 20, mapped_regions=False) as coord:
        deadline = time.monotonic() + 60
        while 9 not in coord.stats()["capacity"]["evicted_dimensions"]:  # 87% of the limit: evicted
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while coord.stats()["superseded_pending"]:  # freed, so that the reload has room
            assert time.monotonic() < deadline
            time.sleep(0.01)
        print("go", flush=True)
        try:
            coord.edit_dimension(9)  # reloads it from its file first
            print("published", flush=True)
        except ShmPoolError as exc:
            print("typed", type(exc).__name__, flush=True)
""")


def _write(path, megabytes: int) -> None:
    builder = RegionBuilder(9, "big")
    for lid in range(1, megabytes + 1):
        builder.add_layer(lid, bytes([lid % 251]) * MiB)
    builder.write(path)


@pytest.mark.parametrize("how", ["publish_region_file", "reload"])
def test_a_file_truncated_while_read_is_a_typed_error_not_a_sigbus(instance_name, tmp_path, how):
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "big.region"
    _write(path, 64 if how == "publish_region_file" else 112)
    script, arg = (PUBLISH, str(path)) if how == "publish_region_file" else (RELOAD, str(folder))
    child = subprocess.Popen([sys.executable, "-c", script, instance_name, arg], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "go"
        with open(path, "r+b") as f:
            f.truncate(4096)  # as `cp` does before it writes
        out, _ = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, f"the coordinator died: exit {child.returncode} (-7 is SIGBUS)"
    assert out.strip() in ("typed RegionFormatError", "published")
