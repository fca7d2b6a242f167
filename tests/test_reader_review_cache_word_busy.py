"""A BUSY bit left in a reader's cache word by anything but its own lookup in progress (a corrupt
or foreign write to the shared reader table) does not make the reader's lookups spin for ever.

A lookup that finds its cache word BUSY asks the mapping to refresh the dimension; the refresh
returned at once when the word named the published generation, BUSY or not, and the lookup
found BUSY again: a loop with no way out (found by a read-path review). The refresh now takes
such a word over (drop, announce, re-check, map), as for a generation it does not have. The
reader runs in a child process with a deadline, so a hang is a failed test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _small_coord import small_coordinator
from shmpool.substrate.layout import CACHE_SHIFT, CacheBit

DEADLINE = 30.0  # seconds: only a hang takes this long

CHILD = """
import sys
import shmpool
reader = shmpool.attach(sys.argv[1])
before = bytes(reader.load_layer_context(1, 1).content)
view = reader._map.dims.get(1)
print(view.cache_pos, view.current.generation, flush=True)
sys.stdin.readline()  # the parent sets BUSY in the word now
ctx = reader.load_layer_context(1, 1)
batch = reader.load_contexts([(1, 1), (1, 1)])
print(bytes(ctx.content) == before and [bytes(c.content) for c in batch] == [before] * 2, flush=True)
"""


def test_a_busy_bit_no_lookup_of_ours_set_is_taken_over(instance_name: str, tmp_path: Path) -> None:
    with small_coordinator(instance_name, tmp_path) as coord:
        proto = coord.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello")
        coord.crystallize(1)
        child = subprocess.Popen([sys.executable, "-c", CHILD, instance_name], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            pos, generation = map(int, child.stdout.readline().split())
            coord._inst.control.caches_mv[pos] = generation << CACHE_SHIFT | int(CacheBit.BUSY)
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=DEADLINE)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0 and out.split() == ["True"], (child.returncode, out, err[-2000:])
