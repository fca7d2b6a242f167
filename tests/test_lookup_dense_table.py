"""A published generation's table is as small as its ids allow, and a miss stops at max_probe.

Dense ids (any run) get the smallest power of two above their count, every id at its home slot
(max_probe 0): half the table bytes of a half-full table, and a miss is one probe even when it
lands inside the run of occupied slots. Other ids keep the half-full table. Real coordinator,
real shared memory; the tables are read from the reader's own mapped generations.
"""

from __future__ import annotations

import random

import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.data import layer_index
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import LayerNotFound

DENSE, SPARSE = 3, 4


def _write(folder, dim: int, name: str, ids) -> None:
    b = RegionBuilder(dim, name)
    for lid in sorted(ids):
        b.add_layer(lid, f"{name} {lid}")
    b.write(folder / f"{name}.region")


def _generation(reader, dim: int):
    reader.load_layer_context(dim, reader.layer_ids(dim)[0])  # maps it
    return reader._map.dims.get(dim).current


def _all_found_and_misses_missed(reader, dim: int, ids, misses) -> None:
    for lid in ids:
        assert bytes(reader.load_layer_context(dim, lid).content) == f"{reader.dimensions()[dim]} {lid}".encode()
    for lid in misses:
        assert reader.find(dim, lid) is None
        with pytest.raises(LayerNotFound):
            reader.load_layer_context(dim, lid)


def test_dense_ids_get_the_small_table_and_every_miss_is_one_probe(instance_name, tmp_path):
    # Random sparse ids: 200 of them share home slots in 256 (any odd stride would not: i * 7919
    # is a run in disguise, and gets the small table too).
    dense, sparse = list(range(1, 201)), random.Random(5).sample(range(2**40), 200)
    _write(tmp_path, DENSE, "dense", dense)
    _write(tmp_path, SPARSE, "sparse", sparse)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord, shmpool.attach(coord.name) as reader:
        gen = _generation(reader, DENSE)
        assert (gen.mask + 1, gen.max_probe) == (256, 0)  # 8 KiB of table where 512 slots took 16 KiB
        # Misses whose home slot is taken (id + 256 lands on id): the bound ends them at once.
        _all_found_and_misses_missed(reader, DENSE, dense, [0, 201, 255, 256, 257, 300, 456, 2**40 + 7, 2**62])
        gen = _generation(reader, SPARSE)
        assert gen.mask + 1 == layer_index.slots_for(200) == 512 and gen.max_probe < 512
        _all_found_and_misses_missed(reader, SPARSE, sparse, [0, 1, *(i + 512 for i in sparse[:20]), 2**41])


def test_an_edit_that_breaks_the_dense_run_rebuilds_a_half_full_table(instance_name, tmp_path):
    _write(tmp_path, DENSE, "dense", range(1, 101))
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord, shmpool.attach(coord.name) as reader:
        assert _generation(reader, DENSE).mask + 1 == 128
        proto = coord.edit_dimension(DENSE)
        proto.add_layer(128 + 5, "dense 133")  # home slot 5 of 128: taken by id 5
        coord.crystallize(DENSE)
        ids = [*range(1, 101), 133]
        gen = _generation(reader, DENSE)
        assert gen.mask + 1 == layer_index.slots_for(101) == 256
        _all_found_and_misses_missed(reader, DENSE, ids, [0, 101, 128, 261, 389])
