"""A context whose ``content`` view the caller released (``with ctx.content as view:``, the
memoryview idiom) still gives its bytes: ``content``, ``verify()``, ``is_array`` and ``array()``
answer with a fresh view, for a zero-copy layer and for an inflated (compressed) one alike.

The context kept the one view it made and handed the released view out again: every later use
raised a raw ``ValueError: operation forbidden on released memoryview object`` (found by a
read-path review).
"""

from __future__ import annotations

import numpy as np
import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.data import compression


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import secrets

    from conftest import TEST_PREFIX
    from shmpool.data.region_builder import RegionBuilder
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    folder = tmp_path_factory.mktemp("released")
    region = RegionBuilder(1, "seed")
    region.add_layer(1, "hello " * 50)
    region.add_layer(3, "cold layer " * 400, compress=True)
    region.write(folder / "seed.region")
    with small_coordinator(name, folder) as coord:
        proto = coord.create_proto_dimension(2, "arrays")
        proto.add_layer(2, np.arange(12, dtype=np.int32))
        coord.crystallize(2)
        with shmpool.attach(name) as r:
            yield r


def _released_then_used(ctx: shmpool.LoadedContext) -> None:
    first = bytes(ctx.content)
    with ctx.content as view:
        assert bytes(view) == first
    assert bytes(ctx.content) == first and ctx.content.readonly
    assert ctx.verify()
    assert len(ctx) == len(first) and ctx.text == first.decode()


def test_a_released_content_view_is_made_again(reader: shmpool.Reader) -> None:
    _released_then_used(reader.load_layer_context(1, 1))
    ctx = reader.load_layer_context(2, 2)
    with ctx.content:
        pass
    assert ctx.is_array and ctx.array().tolist() == list(range(12))


def test_a_released_view_of_an_inflated_layer_is_made_again(reader: shmpool.Reader) -> None:
    if not compression.available():
        pytest.skip("zstandard is not installed")
    ctx = reader.load_layer_context(1, 3)
    assert bytes(ctx.content) == ("cold layer " * 400).encode()  # inflated: a copy of its own
    _released_then_used(ctx)
