"""A reader process owns no page of the control segment alone.

Every word a reader writes in the control segment (its reader row, its cache words, its pin
words) lies on a cache line of its own, but on a page that the other readers of the same
dimensions use too: the pins section is laid out entry-major, 64 bytes per (entry, reader)
(docs/shm-layout.md). A page mapped by one process only is that process's PSS in full; when
each reader's pin row was a 10 KiB stripe of its own, that was a 4 KiB page per reader,
~1.3% of the sample's data for each of 100 readers (docs/performance.md, issue 22).

smaps counts a page as private when one process maps it, so the readers here report their
control mapping's private pages after both have looked up every dimension.
"""

from __future__ import annotations

import subprocess
import sys

from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder

DIMS = tuple(range(1, 13))

# Attaches, looks up every dimension (cache words and TOUCHED written), holds one context per
# dimension (USERS set in each cache word), says so, then on a line of stdin reports the control
# mapping's private kB from its own smaps.
CHILD = """
import sys, shmpool
reader = shmpool.attach(sys.argv[1])
held = [reader.load_layer_context(d, 1) for d in map(int, sys.argv[2].split(","))]
assert all(bytes(c.content) == b"layer of %d" % d for c, d in zip(held, map(int, sys.argv[2].split(","))))
print("ready", reader._slot, flush=True)
sys.stdin.readline()
private, inside = 0, False
with open("/proc/self/smaps") as smaps:
    for line in smaps:
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            inside = line.rstrip().endswith(".control")
        elif inside and head[0] in ("Private_Dirty:", "Private_Clean:"):
            private += int(head[1])
print("private_kB", private, flush=True)
"""


def _seed(folder) -> None:
    for dim in DIMS:
        b = RegionBuilder(dim, f"dim{dim}")
        b.add_layer(1, f"layer of {dim}")
        b.write(folder / f"dim{dim}.region")


def test_two_readers_of_the_same_dimensions_share_every_control_page(instance_name, tmp_path):
    _seed(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord:
        children = [subprocess.Popen([sys.executable, "-c", CHILD, coord.name, ",".join(map(str, DIMS))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for _ in range(2)]
        try:
            slots = []
            for child in children:
                assert child.stdout is not None
                word, slot = child.stdout.readline().split()
                assert word == "ready"
                slots.append(int(slot))
            assert slots[0] != slots[1], "the readers must hold rows of their own"
            private = []
            for child in children:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write("report\n")
                child.stdin.flush()
                word, kb = child.stdout.readline().split()
                assert word == "private_kB"
                private.append(int(kb))
            assert private == [0, 0], (
                f"control pages mapped by one reader alone (kB per reader, slots {slots}): {private}")
        finally:
            for child in children:
                child.kill()
                child.wait(timeout=30)  # generous: catches a hang, not a speed
