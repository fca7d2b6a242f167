"""The core's lookup objects: a lazy ContextCollection (contexts made on access, generations held
for its life), a LoadedContext's view made on first access, and lookups on an instance closed
under the reader."""

from __future__ import annotations

import gc

import pytest

import _reader_children as children
from _small_coord import coord, fill  # noqa: F401  (coord is a fixture)
import shmpool
from shmpool import ContextCollection, LoadedContext, MissingStep, ReaderClosed
from shmpool.data.reader import Reader
from shmpool.substrate.instance import SharedInstance

DIM = 7


def _publish(coord, generation: int) -> None:  # noqa: F811
    proto = coord.create_proto_dimension(DIM, "lazy")
    fill(proto, generation, layers=10, size=500, metadata=True)
    coord.crystallize(DIM)


def test_a_lazy_batch_makes_contexts_on_access_and_keeps_the_list_it_made(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        coll = reader.load_contexts([(DIM, 3), (DIM, 1), (DIM, 3), (1, 1)])
        assert len(coll) == 4 and coll.missing == []
        assert [(c.dimension_id, c.layer_id) for c in coll] == [(DIM, 3), (DIM, 1), (DIM, 3), (1, 1)]
        assert coll[-1].layer_id == 1 and [c.layer_id for c in coll[1:3]] == [1, 3]
        with pytest.raises(IndexError):
            coll[4]
        assert coll.total_bytes == sum(len(c.content) for c in coll)
        listed = coll.contexts
        assert coll.contexts is listed and coll[0] is listed[0]
        listed.pop()  # the list is the collection's from now on
        assert len(coll) == 3 and "[3/3]" in coll.format_for_llm() and "[4/" not in coll.format_for_llm()


def test_a_lazy_batch_holds_its_generation_after_its_reader_closes_and_newer_ones_publish(coord):  # noqa: F811
    _publish(coord, 1)
    reader = shmpool.attach(coord.name)
    coll = reader.load_contexts([(DIM, lid) for lid in range(1, 11)])
    text = coll.format_for_llm()
    reader.close()
    for generation in (2, 3):
        _publish(coord, generation)
    coord.reclaim()
    with shmpool.attach(coord.name) as other:
        held = {(p["dimension_id"], p["generation"]) for p in other.pins()}
        assert (DIM, 1) in held  # the batch's generation, pinned though no context exists yet
        assert other.load_layer_context(DIM, 1).generation == 3
    assert [c.generation for c in coll] == [1] * 10
    # The bytes are still generation 1's, though generations 2 and 3 were published and reclaimed.
    assert [bytes(c.content) for c in coll] == [children.stamped_layer(1, lid, 500 + lid * 10) for lid in range(1, 11)]
    assert all(c.verify() for c in coll) and coll.format_for_llm() == text
    del coll
    gc.collect()
    coord.reclaim()
    with shmpool.attach(coord.name) as other:
        assert (DIM, 1) not in {(p["dimension_id"], p["generation"]) for p in other.pins()}


def test_a_content_view_alone_keeps_its_generation(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        ctx = reader.load_layer_context(DIM, 4)
        view = ctx.content
        assert ctx.content is view and view.readonly and len(ctx) == len(view)
        expected = bytes(view)
        del ctx
        _publish(coord, 2)
        reader.load_layer_context(DIM, 4)  # the reader itself moves on to generation 2
        coord.reclaim()
        assert bytes(view) == expected
        assert (DIM, 1) in {(p["dimension_id"], p["generation"]) for p in reader.pins()}


def test_lookups_on_an_instance_closed_under_the_reader_raise_reader_closed(coord):  # noqa: F811
    _publish(coord, 1)
    inst = SharedInstance.attach(coord.name)
    reader = Reader(inst, owns_instance=False)
    assert reader.load_layer_context(DIM, 2).layer_id == 2
    inst.close()  # the directory's memoryview is released; its mapping may be gone
    with pytest.raises(ReaderClosed):
        reader.load_layer_context(DIM, 2)
    with pytest.raises(ReaderClosed):
        reader.load_contexts([(DIM, 2), (DIM, 3)])
    reader.close()


def test_a_collection_built_from_a_list_keeps_the_dataclass_shape(coord):  # noqa: F811
    _publish(coord, 1)
    with shmpool.attach(coord.name) as reader:
        ctx = reader.load_layer_context(DIM, 5)
        assert ContextCollection().format_for_llm() == "" and len(ContextCollection()) == 0
        missing = MissingStep(1, DIM, 99, "absent")
        eager = ContextCollection([ctx], [missing])
        assert eager.contexts == [ctx] and eager.missing == [missing] and list(eager) == [ctx]
        text = eager.format_for_llm()
        assert text.startswith('[1/1] dimension 7 "lazy" · layer 5 · frequency 0.050 · keywords: g1, l5\n')
        assert text.endswith("\n\n[missing] dimension 7 · layer 99: absent\n")


class _Metadata:
    """What shmpool.dask gives a context over copied bytes: metadata without a generation."""
    generation, name = 4, "copied"

    def frequency(self, row: int) -> float:
        return 0.5

    def keywords(self, row: int) -> tuple[str, ...]:
        return ("k",)

    def is_text(self, row: int) -> bool:
        return True

    def crc32(self, row: int) -> int:
        import zlib
        return zlib.crc32(b"hello")


def test_a_context_over_bytes_of_ones_own_answers_from_its_metadata():
    ctx = LoadedContext(2, 9, memoryview(b"hello"), _Metadata(), 0)
    assert (ctx.dimension_id, ctx.layer_id, ctx.generation, ctx.dimension_name) == (2, 9, 4, "copied")
    assert bytes(ctx.content) == b"hello" and len(ctx) == 5 and ctx.text == "hello"
    assert ctx.frequency == 0.5 and ctx.keywords == ("k",) and ctx.is_text and ctx.verify()
    assert ContextCollection([ctx]).format_for_llm() == \
        '[1/1] dimension 2 "copied" · layer 9 · frequency 0.500 · keywords: k\nhello\n'
