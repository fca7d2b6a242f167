"""What a job may take and return, across a real Coordinator, its worker and a client.

An int beyond 64 bits is refused with a typed TypeError naming the argument (or the job whose
result it was), not msgpack's bare OverflowError. numpy arrays travel as arrays: dtype, shape,
order and values kept, small ones in the slot, large ones spilled both ways.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

import shmpool
from conftest import TEST_PREFIX, TESTS
from shmpool.coordinator import Coordinator
from shmpool.errors import InvalidArgumentType, ShmPoolError
from shmpool.substrate.names import list_objects

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.fixture(scope="module")
def pool():
    """One coordinator with one worker for the tests here (module-scoped: SAME_WORKER in conftest)."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, workers=1, job_modules=["_jobs"]) as coord:
            with shmpool.connect(name) as client:
                yield coord, client
    assert list_objects(name) == ([], [])


@pytest.mark.parametrize("args, kwargs, named", [
    ((1, 2 ** 64), {}, "args[1]"),
    ((-(2 ** 63) - 1,), {}, "args[0]"),
    (("x", [1, {"deep": 2 ** 70}]), {}, "args[1]"),
    ((), {"big": 2 ** 100}, "kwargs['big']"),
])
@pytest.mark.parametrize("via", ["submit", "call"])
def test_an_int_beyond_64_bits_as_an_argument_is_a_type_error_naming_it(pool, args, kwargs, named, via):
    _, client = pool
    with pytest.raises(InvalidArgumentType) as raised:
        if via == "submit":
            client.submit("_jobs:echo", *args, **kwargs)
        else:
            client.call("_jobs:echo", *args, **kwargs)
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, ShmPoolError)
    assert raised.value.argument == named and "64 bits" in str(raised.value), raised.value
    assert client.submit("_jobs:echo", 2 ** 64 - 1, -(2 ** 63)).result(10)["args"] == [2 ** 64 - 1, -(2 ** 63)]


def test_map_with_chunks_names_the_item_that_cannot_be_sent(pool):
    _, client = pool
    with pytest.raises(InvalidArgumentType) as raised:
        list(client.map("_jobs:same", [1, 2, 2 ** 70], chunksize=3, timeout=10))
    assert raised.value.argument == "item 2 of the chunk, args[0]", raised.value
    assert list(client.map("_jobs:same", [1, 2, 3], chunksize=3, timeout=10)) == [1, 2, 3]


def test_numpy_scalars_arrive_as_python_values(pool):
    _, client = pool
    got = client.submit("_jobs:same", [np.bool_(True), np.int16(-3), np.uint64(2 ** 64 - 1), np.float32(0.5)]).result(10)
    assert got == [True, -3, 2 ** 64 - 1, 0.5] and type(got[0]) is bool


def test_an_object_argument_names_its_argument_too(pool):
    _, client = pool
    with pytest.raises(InvalidArgumentType, match="cannot send") as raised:
        client.submit("_jobs:echo", 1, key=object())
    assert raised.value.argument == "kwargs['key']"


def test_an_int_beyond_64_bits_as_a_result_is_a_type_error_naming_the_job(pool):
    _, client = pool
    for via in ("submit", "call"):
        with pytest.raises(InvalidArgumentType) as raised:
            if via == "submit":
                client.submit("_jobs:huge_int").result(10)
            else:
                client.call("_jobs:huge_int", timeout=10)
        assert isinstance(raised.value, TypeError), raised.value
        assert "_jobs:huge_int" in raised.value.argument and "64 bits" in str(raised.value), raised.value
        assert isinstance(raised.value.__cause__, shmpool.RemoteTraceback)
    assert client.submit("_jobs:echo", 5).result(10)["args"] == [5]  # the worker serves on


SMALL_ARRAYS = [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.arange(12, dtype=np.int8).reshape(3, 4),
    np.arange(24, dtype=">i4").reshape(2, 3, 4),           # big-endian kept
    np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4)),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    np.array([True, False, True]),
    np.array(["ab", "cde"], dtype="U3"),
    np.array([b"ab", b"c"], dtype="S2"),
    np.array(["2024-01-02", "2025-03-04"], dtype="datetime64[ns]"),
    np.zeros(3, dtype=[("x", "<f4"), ("n", "<i8")]),        # structured, fixed size
    np.array(7.5, dtype=np.float32),                        # 0-d
    np.zeros((0, 5), dtype=np.int64),                       # empty
    np.arange(20, dtype=np.float64)[::2],                   # not contiguous: sent as C order
]


@pytest.mark.parametrize("array", SMALL_ARRAYS, ids=lambda a: f"{a.dtype.str}-{a.shape}")
def test_an_array_goes_to_a_job_and_comes_back_as_the_same_array(pool, array):
    _, client = pool
    back = client.submit("_jobs:same", array).result(10)
    assert type(back) is np.ndarray
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert back.flags.f_contiguous
    assert back.flags.writeable  # an array of its own, as ProcessPoolExecutor gives
    nested = client.call("_jobs:same", {"a": [array, (array,)]}, timeout=10)
    np.testing.assert_array_equal(nested["a"][1][0], array)


def test_an_array_argument_arrives_in_the_worker_as_an_array(pool):
    _, client = pool
    array = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    seen = client.submit("_jobs:describe_array", array).result(10)
    assert seen == {"type": "ndarray", "dtype": "<f4", "shape": [2, 3], "f_order": True, "writeable": True,
                    "sum": 15.0}


@pytest.mark.parametrize("refused", [np.array([object(), 1], dtype=object),
                                     np.zeros(2, dtype=[("x", "<f4"), ("o", "O")]),
                                     np.ma.masked_array([1, 2], mask=[0, 1])])
def test_an_array_that_cannot_travel_as_data_is_refused_with_the_typed_error(pool, refused):
    _, client = pool
    with pytest.raises(InvalidArgumentType, match="cannot send") as raised:
        client.submit("_jobs:same", refused)
    assert raised.value.argument == "args[0]"


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_large_array_result_is_spilled_and_arrives_whole(pool, order):
    _, client = pool
    n = 1 << 20  # 8 MB of float64, far beyond the 64 KiB slot
    for via in ("submit", "call"):
        got = client.submit("_jobs:ramp", n, "float64", order).result(30) if via == "submit" else \
            client.call("_jobs:ramp", n, "float64", order, timeout=30)
        assert type(got) is np.ndarray and got.dtype == np.float64 and got.shape == (2, n // 2)
        np.testing.assert_array_equal(got, np.arange(n, dtype=np.float64).reshape((2, n // 2), order=order))
        assert got.flags.f_contiguous == (order == "F")


def test_a_large_array_argument_arrives_whole_whatever_the_job_payload(instance_name):
    """An 8 MB argument spills (shmpool/jobs/arg_spill.py: above a quarter of job_payload) with
    the default 64 KiB slots and with 9 MiB ones alike, and arrives whole either way
    (tests/test_client_array_arguments.py covers the spill itself)."""
    array = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
    for payload in (9 << 20, 64 * 1024):
        with Coordinator(instance_name, workers=1, job_modules=["_jobs"], job_slots=4,
                         job_payload=payload) as _coord:
            with shmpool.connect(instance_name) as client:
                seen = client.submit("_jobs:describe_array", array).result(30)
                assert seen["shape"] == [1024, 1024] and seen["sum"] == float(array.sum())
                np.testing.assert_array_equal(client.call("_jobs:same", array, timeout=30), array)
