"""A raising miss (LayerNotFound) formats its message only when it is shown.

A caller that asks "is it there?" by catching LayerNotFound used to pay ~5 us for a message
nobody read (scripts/bench_keys.py ``absent_key_ns``); the message is now made by ``__str__``.
What must not change: the text (it names the dimension, the generation and ids that exist), the
fields, pickling, the job wire format (an error raised in a worker reaches the caller as itself),
and repr showing the message.
"""

from __future__ import annotations

import pickle

import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import LayerNotFound, ShmPoolError
from shmpool.jobs import codec

DIM = 3


def _seed(folder, count: int) -> None:
    b = RegionBuilder(DIM, "prices")
    for i in range(count):
        b.add_layer(i * 10, f"layer {i}")
    b.add_layer("AAPL", "apple")
    b.write(folder / "prices.region")


def test_a_miss_names_the_dimension_its_generation_and_ids_that_exist(instance_name, tmp_path):
    _seed(tmp_path, 20)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord, shmpool.attach(coord.name) as reader:
        generation = reader.generation(DIM)
        with pytest.raises(LayerNotFound) as caught:
            reader.load_layer_context(DIM, 7)
        exc = caught.value
        assert isinstance(exc, ShmPoolError) and isinstance(exc, LookupError)
        assert (exc.dimension_id, exc.layer_id, exc.generation, exc.layer_count) == (DIM, 7, generation, 21)
        assert len(exc.sample_ids) == 12  # the first rows' ids: the 20 ids, and the key's id where it sorts
        assert len(set(exc.sample_ids) - {i * 10 for i in range(20)}) <= 1
        text = str(exc)
        assert text.startswith(f"layer 7 not found in dimension {DIM} (generation {generation}, 21 layers; "
                               "layer ids include ")
        assert "in all" not in text  # 12 ids given, 12 shown
        assert repr(exc) == f"LayerNotFound({text!r})"
        with pytest.raises(LayerNotFound, match=r"layer AAPX not found in dimension 3"):
            reader.load_layer_context(DIM, "AAPX")


def test_a_miss_pickles_and_crosses_the_job_wire_as_itself():
    exc = LayerNotFound(dimension_id=5, layer_id="key", generation=9, layer_count=40, sample_ids=range(15))
    text = str(exc)
    assert text == ("layer key not found in dimension 5 (generation 9, 40 layers; layer ids include "
                    "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (15 in all))")
    for again in (pickle.loads(pickle.dumps(exc)), codec.decode_error(codec.encode_error(exc), "job")):
        assert type(again) is LayerNotFound
        assert str(again) == text
        assert (again.dimension_id, again.layer_id, again.generation, again.layer_count, again.sample_ids) == \
            (5, "key", 9, 40, tuple(range(15)))
    bare = LayerNotFound(dimension_id=1, layer_id=2)
    assert str(bare) == "layer 2 not found in dimension 1 (generation 0, 0 layers)"
