"""A directory entry whose GENERATION word names a generation neither of its slots holds makes
a lookup, a snapshot and ``dimensions()`` raise RegionFormatError, never spin for ever.

``Directory.read`` retried until the word and a slot agreed, which a publish in progress makes
true within a retry or two; a corrupt or hostile control segment never does, and the reader
looped for ever, holding its mapping's lock, so every other thread's slow path stopped too
(found by a read-path review). Each case runs in a child process with a deadline: a hang is a
failed test, not a stuck pytest worker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.data.directory import Directory

DEADLINE = 30.0  # seconds: only a hang takes this long

CHILD = """
import sys
import shmpool
from shmpool.errors import RegionFormatError
reader = shmpool.attach(sys.argv[1])
try:
    if sys.argv[2] == "lookup":
        reader.load_layer_context(1, 1)
    elif sys.argv[2] == "snapshot":
        reader.snapshot().close()
    elif sys.argv[2] == "dimensions":
        reader.dimensions()
    print("no error", flush=True)
except RegionFormatError as exc:
    print("RegionFormatError", "entry" in str(exc), flush=True)
finally:
    reader.close()
"""


@pytest.mark.parametrize("call", ["lookup", "snapshot", "dimensions"])
def test_a_generation_word_no_slot_holds_is_refused_typed(instance_name: str, tmp_path: Path, call: str) -> None:
    with small_coordinator(instance_name, tmp_path) as coord:
        proto = coord.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello")
        coord.crystallize(1)
        dir_mv = coord._inst.control.directory_mv
        with shmpool.attach(instance_name) as reader:
            entry = reader._map.directory.find(1)
        pos = Directory.generation_position(entry)
        published = dir_mv[pos]
        dir_mv[pos] = published + 1000  # written through the coordinator's mapping: no slot holds it
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, instance_name, call], capture_output=True, text=True,
                                  timeout=DEADLINE)
        finally:
            dir_mv[pos] = published
        assert done.returncode == 0 and done.stdout.split() == ["RegionFormatError", "True"], (
            done.returncode, done.stdout[-500:], done.stderr[-2000:])
