"""numpy arrays as first-class layers: published from an ndarray, read back in another process as
a read-only view into shared memory with their dtype, shape and order, no copy."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

import shmpool
from shmpool.coordinator import Coordinator

DTYPES = ["<f8", ">i4", "u1", "?", "<c16", "<M8[ns]", "U7", [("x", "<f4"), ("n", "<i8")]]


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {f"dtype-{i}": np.zeros((3, 5), dtype=np.dtype(dt)) for i, dt in enumerate(DTYPES)}
    out["prices"] = rng.standard_normal(1_000_000)  # 8 MB of float64
    out["fortran"] = np.asfortranarray(rng.integers(0, 100, (40, 30)).astype("<i2"))
    out["scalar"] = np.array(3.5)
    out["empty"] = np.zeros((0, 4), dtype="<f4")
    out["strided"] = np.arange(20, dtype="<i8")[::3]  # neither C nor F contiguous: stored as C
    return out


def _read_back(name: str, results) -> None:
    with shmpool.attach(name) as reader:
        got = {}
        for key in _arrays():
            ctx = reader.get("arrays", key)
            arr = ctx.array()
            # dtype as its .npy description: pickling an array through the queue loses '>' byte order
            got[key] = (np.lib.format.dtype_to_descr(arr.dtype), arr.shape, arr.tolist(), arr.flags.writeable, arr.flags.f_contiguous and not arr.flags.c_contiguous,
                        arr.ctypes.data % max(arr.dtype.alignment, 1) == 0,
                        np.shares_memory(arr, np.frombuffer(ctx.content, dtype="u1")))
        results.put(got)


def test_arrays_come_back_from_another_process_as_read_only_views_with_dtype_shape_and_order(instance_name):
    arrays = _arrays()
    with Coordinator(instance_name, workers=0) as coord:
        proto = coord.create_proto_dimension(1, "arrays")
        for key, arr in arrays.items():
            proto.add_layer(key, arr)
        coord.crystallize(1)
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=_read_back, args=(instance_name, results))
        proc.start()
        got = results.get(timeout=120)
        proc.join(30)
    for key, arr in arrays.items():
        descr, shape, values, writeable, fortran, aligned, shared = got[key]
        assert descr == np.lib.format.dtype_to_descr(arr.dtype) and shape == arr.shape, key
        assert values == arr.tolist(), key
        assert not writeable and aligned and (shared or arr.size == 0), key
        assert fortran == (key == "fortran"), key


def test_arrays_in_region_files_and_edits(instance_name, tmp_path):
    builder = shmpool.RegionBuilder(2, "grid")
    builder.add_layer("g", np.arange(12, dtype="<f4").reshape(3, 4))
    builder.write(tmp_path / "grid.region")
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord:
        edit = coord.edit_dimension(2)
        edit.add_layer("h", np.ones(4, dtype="<i8"))
        coord.crystallize(2)
        with shmpool.attach(instance_name) as reader, reader.snapshot() as snap:
            assert reader.get("grid", "g").array()[2, 3] == 11
            assert snap.load_layer_context(2, "h").array().tolist() == [1, 1, 1, 1]


def test_object_arrays_are_refused_and_a_plain_layer_is_not_an_array(instance_name):
    with Coordinator(instance_name, workers=0) as coord:
        proto = coord.create_proto_dimension(1, "x")
        with pytest.raises(shmpool.InvalidLayer, match="Python objects"):
            proto.add_layer(1, np.array([object()]))
        proto.add_layer(2, b"plain bytes")
        coord.crystallize(1)
        ctx = coord.reader().load_layer_context(1, 2)
        assert not ctx.is_array
        with pytest.raises(shmpool.InvalidLayer, match="not published from a numpy array"):
            ctx.array()
