"""Layers addressed by string keys and dimensions by name: ``reader.get("prices", "AAPL")``.

A key is its key id, a stable 63-bit hash (shmpool.key_id), so every path that carries ids carries
keys: region files, crystallize, edits, snapshots, jobs. Ids keep working beside keys.
"""

from __future__ import annotations

import multiprocessing as mp

import pytest

import shmpool
from shmpool import InvalidId, key_id
from shmpool.coordinator import Coordinator


def _read_in_another_process(name: str, results) -> None:
    with shmpool.attach(name) as reader:
        results.put((reader.get("prices", "AAPL").text, reader.load_layer_context("prices", "MSFT").text,
                     reader.get(1, 7).text))


def test_a_keyed_layer_is_read_by_dimension_name_and_key_from_another_process(instance_name, tmp_path):
    builder = shmpool.RegionBuilder(1, "prices")
    builder.add_layer("AAPL", "187.2")
    builder.add_layer("MSFT", "402.1")
    builder.add_layer(7, "an id still works")
    builder.write(tmp_path / "prices.region")
    with Coordinator(instance_name, data_dir=tmp_path, workers=0):
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=_read_in_another_process, args=(instance_name, results))
        proc.start()
        assert results.get(timeout=60) == ("187.2", "402.1", "an id still works")
        proc.join(30)


def test_keys_through_crystallize_edits_snapshots_and_jobs(instance_name):
    with Coordinator(instance_name, workers=1) as coord:
        proto = coord.create_proto_dimension(3, "prices")
        proto.add_layer("AAPL", "1")
        proto.add_layer("GOOG", "2")
        assert coord.load_layer_context(3, "AAPL").text == "1"  # generation 0, in the coordinator
        coord.crystallize(3)
        edit = coord.edit_dimension(3)
        edit.add_layer("AAPL", "3")
        edit.remove_layer("GOOG")
        coord.crystallize(3)
        with shmpool.attach(instance_name) as reader:
            ctx = reader.get("prices", "AAPL")
            assert ctx.text == "3" and ctx.layer_id == key_id("AAPL")
            with pytest.raises(shmpool.LayerNotFound) as missing:
                reader.get("prices", "GOOG")
            assert "'GOOG'" in str(missing.value)
            with reader.snapshot() as snap:
                assert snap.load_layer_context(3, "AAPL").text == "3"
        with shmpool.connect(instance_name) as client:
            assert client.lookup(3, "AAPL").text == "3"


def test_key_ids_are_stable_and_apart_from_small_ids():
    assert key_id("AAPL") == key_id("AAPL") != key_id("AAPL ")
    assert 2**62 <= key_id("AAPL") < 2**63 and 2**62 <= key_id("") < 2**63


def test_an_unknown_dimension_name_and_a_bad_key_type_are_typed(instance_name):
    with Coordinator(instance_name, workers=0) as coord:
        proto = coord.create_proto_dimension(1, "prices")
        proto.add_layer("AAPL", "1")
        coord.crystallize(1)
        with shmpool.attach(instance_name) as reader:
            with pytest.raises(shmpool.DimensionNotFound) as err:
                reader.get("volumes", "AAPL")
            assert "volumes" in str(err.value) and "prices" in str(err.value)
            with pytest.raises(InvalidId):
                reader.get("prices", b"AAPL")
            with pytest.raises(InvalidId):
                reader.get("prices", 1.0)


def test_build_from_jsonl_takes_string_keys(instance_name, tmp_path):
    import subprocess
    import sys

    source = tmp_path / "prices.jsonl"
    source.write_text('{"dimension_id": 5, "dimension_name": "prices", "layer_id": "AAPL", "text": "187.2"}\n'
                      '{"dimension_id": 5, "layer_id": 9, "text": "an id"}\n')
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "shmpool", "build", str(out), "--from", str(source)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with Coordinator(instance_name, data_dir=out, workers=0):
        with shmpool.attach(instance_name) as reader:
            assert reader.get("prices", "AAPL").text == "187.2" and reader.get("prices", 9).text == "an id"
