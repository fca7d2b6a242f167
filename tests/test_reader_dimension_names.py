"""A dimension name is taken wherever a Reader takes a dimension: get, find and
load_layer_context did, but scan, layer_ids, generation, wait_generation and await_generation
refused a name with InvalidId (found by the docs read-through). "3" is the dimension named
"3" (DimensionNotFound if none is), never dimension 3."""

from __future__ import annotations

import asyncio
import secrets

import pytest

import shmpool
from conftest import TEST_PREFIX
from shmpool import DimensionNotFound, InvalidId
from shmpool.coordinator import Coordinator

SPATIAL = 3  # the sample's dimension 3 is called "spatial" (shmpool/data/sample.py)


@pytest.fixture(scope="module")
def reader():
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=shmpool.SAMPLE, workers=0), shmpool.attach(name) as r:
        yield r


def test_every_call_taking_a_dimension_takes_its_name(reader):
    assert reader.dimensions()[SPATIAL] == "spatial"
    assert reader.layer_ids("spatial") == reader.layer_ids(SPATIAL)
    assert reader.generation("spatial") == reader.generation(SPATIAL)
    by_name = [(c.dimension_id, c.layer_id, bytes(c.content)) for c in reader.scan("spatial")]
    assert by_name == [(c.dimension_id, c.layer_id, bytes(c.content)) for c in reader.scan(SPATIAL)]
    assert by_name and all(d == SPATIAL for d, _, _ in by_name)
    now = reader.generation(SPATIAL)
    # Nothing publishes: a wait for a newer generation times out, by name as by id.
    with pytest.raises(shmpool.GenerationTimeout):
        reader.wait_generation("spatial", after=now, timeout=0.05)
    assert reader.wait_generation("spatial", after=now - 1, timeout=0.05) == now
    assert asyncio.run(reader.await_generation("spatial", after=now - 1, timeout=0.05)) == now


def test_an_unknown_name_is_dimension_not_found_and_other_types_stay_invalid_id(reader):
    for call in (reader.layer_ids, reader.generation, lambda d: list(reader.scan(d)),
                 lambda d: reader.wait_generation(d, timeout=0)):
        with pytest.raises(DimensionNotFound, match="identity"):  # the error lists the names there are
            call("3")
        with pytest.raises(InvalidId):
            call(3.0)


def test_a_snapshot_takes_names_as_its_reader_does(reader):
    with reader.snapshot() as snap:
        assert snap.generation("spatial") == snap.generation(SPATIAL)
        assert snap.layer_ids("spatial") == snap.layer_ids(SPATIAL)
        first = snap.layer_ids(SPATIAL)[0]
        ctx = snap.load_layer_context("spatial", first)
        assert (ctx.dimension_id, ctx.layer_id) == (SPATIAL, first)
        assert bytes(ctx.content) == bytes(snap.load_layer_context(SPATIAL, first).content)
        assert snap.find("spatial", first) is not None
        assert [c.layer_id for c in snap.scan("spatial")] == snap.layer_ids(SPATIAL)
        with pytest.raises(DimensionNotFound):
            snap.load_layer_context("3", first)
        with pytest.raises(InvalidId):
            snap.generation(3.0)
