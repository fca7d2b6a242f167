"""Layer and dimension ids are ints: anything else (a bool, a float, a str) is a TypeError naming
the argument, at every entry point of a reader and a client; numpy integers are ints."""

from __future__ import annotations

import enum

import numpy as np
import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.data.context import NavigationPath
from shmpool.substrate.names import list_objects


# ----------------------------------------------------------------------------- ids are ints

@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_dir):
    import secrets

    from conftest import TEST_PREFIX
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with Coordinator(name, data_dir=sample_dir, workers=1) as coord:
        with shmpool.connect(name) as client:
            yield coord, client
    assert list_objects(name) == ([], [])


BAD_IDS = [True, False, np.bool_(True), 3.0, np.float64(3), b"3", None]  # a str is a key or a name (issue 23)


@pytest.mark.parametrize("bad", BAD_IDS, ids=[repr(b) for b in BAD_IDS])
def test_lookup_ids_that_are_not_integers_are_a_type_error_naming_the_argument(served, bad):
    _, client = served
    reader = client.reader
    reader.load_layer_context(1, 17)  # dimension 1 mapped: a bool must not find it in the cache
    for args, argument in (((bad, 17), "dimension_id"), ((3, bad), "layer_id")):
        with pytest.raises(TypeError) as err:
            reader.load_layer_context(*args)
        assert isinstance(err.value, shmpool.ShmPoolError)
        assert err.value.argument == argument and argument in str(err.value)
        assert type(bad).__name__ in str(err.value)
        with pytest.raises(TypeError, match=argument):
            reader.load_contexts([args])
        with pytest.raises(TypeError, match=argument):
            NavigationPath([args])
        with pytest.raises(TypeError, match=argument):
            client.lookup(*args, timeout=10)
    for call in (lambda d: list(reader.scan(d)), reader.generation, reader.layer_ids):
        with pytest.raises(TypeError, match="dimension_id"):
            call(bad)


def test_numpy_integer_ids_are_accepted_and_come_back_as_ints(served):
    _, client = served
    reader = client.reader
    for dim, layer in ((np.int64(3), np.int64(4)), (np.int32(3), np.uint16(4)), (3, np.uint64(4))):
        ctx = reader.load_layer_context(dim, layer)
        assert (ctx.dimension_id, ctx.layer_id) == (3, 4)
        assert type(ctx.dimension_id) is int and type(ctx.layer_id) is int
        assert bytes(ctx.content) == bytes(reader.load_layer_context(3, 4).content)
        [got] = reader.load_contexts([(dim, layer)])
        assert (type(got.dimension_id), type(got.layer_id)) == (int, int)
        assert client.lookup(dim, layer, timeout=10).layer_id == 4
    class Dimension(enum.IntEnum):  # an int subclass that is not a bool is an int
        TEMPORAL = 3

    assert type(reader.load_layer_context(Dimension.TEMPORAL, 4).dimension_id) is int
    assert list(NavigationPath([(np.int8(1), np.int64(2))])) == [(1, 2)]
    assert reader.layer_ids(np.int16(5)) == reader.layer_ids(5)
