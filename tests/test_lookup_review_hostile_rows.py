"""A corrupt table slot of a shared layer index (its META word naming a row past the index's
rows) makes every read path raise RegionFormatError, never read outside the index.

The header and each slot's byte range were checked; the row a slot names was not. A batch
(``load_contexts``, a reader's or a snapshot's) kept that row and read it when a context was
asked for, or in ``format_for_llm`` / ``total_bytes``: a read 2**40 rows past the index, a
SIGSEGV (found by a read-path review). A single lookup returned a context whose metadata
raised a raw IndexError. Each case runs in a child process, so that a regression is a failed
test, not a dead pytest worker; the corruption is written through the coordinator's own mapping
of the pool, as a hostile or broken process sharing the segment could.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.data import layer_index

FAR_ROW = 1 << 40

CHILD = """
import sys
import shmpool
from shmpool.errors import RegionFormatError
reader = shmpool.attach(sys.argv[1])
case = sys.argv[2]
try:
    if case == "batch_item":
        bytes(reader.load_contexts([(1, 1)])[0].content)
    elif case == "batch_iter":
        [c.frequency for c in reader.load_contexts([(1, 2), (1, 1)])]
    elif case == "batch_format":
        reader.load_contexts([(1, 1)]).format_for_llm()
    elif case == "batch_total":
        reader.load_contexts([(1, 1)]).total_bytes
    elif case == "snapshot_batch":
        with reader.snapshot() as snap:
            snap.load_contexts([(1, 1)]).format_for_llm()
    elif case == "lookup_metadata":
        ctx = reader.load_layer_context(1, 1)
        ctx.frequency, ctx.keywords
    elif case == "key_lookup":
        reader.load_layer_context(1, "k1")
    print("no error", flush=True)
except RegionFormatError as exc:
    print("RegionFormatError", flush=True)
finally:
    reader.close()
"""

CASES = ["batch_item", "batch_iter", "batch_format", "batch_total", "snapshot_batch", "lookup_metadata",
         "key_lookup"]


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import secrets

    from conftest import TEST_PREFIX
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with small_coordinator(name, tmp_path_factory.mktemp("hostile")) as coord:
        proto = coord.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello")
        proto.add_layer(2, "world")
        proto.add_layer("k1", "keyed")
        coord.crystallize(1)
        with shmpool.attach(name) as reader:  # where the index lies, as a reader finds it
            directory = reader._map.directory
            loc = directory.read(directory.find(1))
        inst = coord._inst
        index = inst.view(loc.pool, loc.first_block * inst.block_size(loc.pool), loc.nbytes)
        header = layer_index.read_header(index, source="test", dimension_id=1, generation=loc.generation)
        table = np.frombuffer(index, np.int64, count=header.slots * layer_index.SLOT_WORDS,
                              offset=header.table_offset)
        for key in (1, shmpool.key_id("k1")):
            meta = table[layer_index.probe(table, header.slots - 1, key) + layer_index.SLOT_META]
            table[layer_index.probe(table, header.slots - 1, key) + layer_index.SLOT_META] = (
                FAR_ROW << layer_index.POOL_BITS | (int(meta) & layer_index.POOL_MASK))
        yield name


@pytest.mark.parametrize("case", CASES)
def test_a_slot_naming_a_row_past_the_index_is_refused_typed(corrupt: str, case: str) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, corrupt, case], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)
    assert done.returncode == 0 and done.stdout.strip() == "RegionFormatError", (
        done.returncode, done.stdout[-500:], done.stderr[-2000:])
