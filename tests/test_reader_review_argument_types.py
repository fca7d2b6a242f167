"""Arguments of the wrong type to the reader's and snapshot's methods raise a typed
InvalidArgumentType naming the argument, not a raw TypeError from deep inside.

Found by a read-path review feeding every public reader method odd values: ``scan(dim, 1)``
raised Cython's "Argument 'keyword' has incorrect type", ``dimension_id([1])`` "unhashable type",
``load_contexts(None)`` / ``load_contexts(5)`` "'NoneType' object is not iterable".
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.errors import InvalidArgumentType


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import secrets

    from conftest import TEST_PREFIX
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with small_coordinator(name, tmp_path_factory.mktemp("types")) as coord:
        proto = coord.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello", keywords=["greeting"])
        coord.crystallize(1)
        with shmpool.attach(name) as r:
            yield r


CALLS: dict[str, Callable[[shmpool.Reader, Any], Any]] = {
    "scan_keyword": lambda r, v: list(r.scan(1, v)),
    "snapshot_scan_keyword": lambda r, v: list(r.snapshot().scan(1, v)),
    "dimension_id": lambda r, v: r.dimension_id(v),
    "load_contexts": lambda r, v: r.load_contexts(v),
    "load_contexts_lenient": lambda r, v: r.load_contexts(v, strict=False),
    "snapshot_load_contexts": lambda r, v: r.snapshot().load_contexts(v),
}
VALUES = {"scan_keyword": [1, b"greeting", ["greeting"], True],
          "snapshot_scan_keyword": [1, b"greeting"],
          "dimension_id": [[1], {"a": 1}, b"seed", 1.5],
          "load_contexts": [None, 5, 1.5, object()],
          "load_contexts_lenient": [None, 5],
          "snapshot_load_contexts": [None, 5]}


@pytest.mark.parametrize("call, value", [(c, v) for c, vs in VALUES.items() for v in vs],
                         ids=[f"{c}-{type(v).__name__}{i}" for c, vs in VALUES.items() for i, v in enumerate(vs)])
def test_a_wrong_type_is_refused_typed(reader: shmpool.Reader, call: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentType):
        CALLS[call](reader, value)


def test_right_types_still_work(reader: shmpool.Reader) -> None:
    assert [c.layer_id for c in reader.scan(1, "greeting")] == [1]
    assert reader.dimension_id("seed") == 1
    assert len(reader.load_contexts([(1, 1)])) == 1 and len(reader.load_contexts(iter([(1, 1)]))) == 1


def test_a_lazy_batch_index_past_any_size_is_an_index_error(reader: shmpool.Reader) -> None:
    """A lazy ContextCollection indexed by an int past a C index raised OverflowError; a list
    raises IndexError, and so does the collection now."""
    coll = reader.load_contexts([(1, 1)])
    for index in (2**63, -2**63, 10**30, 1, -2):
        with pytest.raises(IndexError):
            coll[index]
    assert coll[-1].layer_id == 1
