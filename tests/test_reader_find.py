"""Reader.find / Snapshot.find and Reader.get(..., default): an absent layer is None (or the
default), never an exception, and every other failure is still typed.

A miss through LayerNotFound costs ~5 us (the exception, which names the ids that exist, is
built in Python); find's miss is a probe (scripts/bench_keys.py). The miss must leave the
reader as a raising miss does: no generation kept pinned by it, the next lookups right.
"""

from __future__ import annotations

import gc

import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import DimensionNotFound, InvalidId, LayerNotFound

DIM = 3


def _seed(folder) -> None:
    b = RegionBuilder(DIM, "prices")
    b.add_layer(1, "one")
    b.add_layer("AAPL", "apple")
    b.write(folder / "prices.region")


def test_find_returns_the_layer_or_none(instance_name, tmp_path):
    _seed(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord, shmpool.attach(coord.name) as reader:
        assert bytes(reader.find(DIM, 1).content) == b"one"
        assert bytes(reader.find("prices", "AAPL").content) == b"apple"
        assert reader.find(DIM, 2) is None
        assert reader.find(DIM, "MSFT") is None
        assert reader.find("prices", "aapl") is None  # keys compare as text, case included
        with pytest.raises(DimensionNotFound):
            reader.find(99, 1)
        with pytest.raises(DimensionNotFound):
            reader.find("no such dimension", 1)
        with pytest.raises(InvalidId):
            reader.find(DIM, 1.0)
        with reader.snapshot() as snap:
            assert bytes(snap.find(DIM, "AAPL").content) == b"apple"
            assert snap.find(DIM, 2) is None and snap.find(DIM, "MSFT") is None
            with pytest.raises(DimensionNotFound):
                snap.find(99, 1)
        # A raising lookup after misses still raises, and names what exists.
        with pytest.raises(LayerNotFound):
            reader.load_layer_context(DIM, 2)


def test_get_with_a_default_returns_it_for_an_absent_layer_only(instance_name, tmp_path):
    _seed(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord, shmpool.attach(coord.name) as reader:
        marker = object()
        assert reader.get("prices", "MSFT", marker) is marker
        assert reader.get(DIM, 2, None) is None
        assert bytes(reader.get("prices", "AAPL", marker).content) == b"apple"
        with pytest.raises(LayerNotFound):
            reader.get("prices", "MSFT")
        with pytest.raises(DimensionNotFound):
            reader.get("no such dimension", "AAPL", marker)


def test_misses_pin_nothing(instance_name, tmp_path):
    """A held context pins its generation (USERS in the cache word); misses leave it clear."""
    _seed(tmp_path)
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord, shmpool.attach(coord.name) as reader:
        def pinned() -> bool:
            return any(p["dimension_id"] == DIM for p in reader.pins())

        ctx = reader.find(DIM, 1)
        assert ctx is not None and pinned(), "a live context must pin: the test proves nothing otherwise"
        del ctx
        gc.collect()
        assert not pinned()
        for _ in range(100):
            assert reader.find(DIM, 2) is None and reader.find(DIM, "MSFT") is None
            assert reader.get("prices", "MSFT", None) is None
        assert not pinned(), reader.pins()
