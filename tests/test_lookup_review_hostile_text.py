"""Text the coordinator verified as UTF-8 (a dimension's name, a layer's keywords, a text layer's
bytes) that is no longer UTF-8 in shared memory is RegionFormatError naming where, not a raw
UnicodeDecodeError from the core.

Found by a read-path review writing one 0xFF byte into each through the coordinator's mapping,
as a corrupt or hostile process sharing the segment could: ``dimension_name``, ``keywords``,
``scan(dim, keyword)``, ``text`` and ``format_for_llm`` (lazy and eager) raised the raw error.
A binary layer's ``text`` still raises UnicodeDecodeError: the caller asked to decode bytes that
were never text.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.data import layer_index
from shmpool.errors import RegionFormatError


def _index(coord: Any, reader: shmpool.Reader, dim: int) -> tuple[memoryview, Any, np.ndarray]:
    directory = reader._map.directory
    loc = directory.read(directory.find(dim))
    inst = coord._inst
    index = inst.view(loc.pool, loc.first_block * inst.block_size(loc.pool), loc.nbytes)
    header = layer_index.read_header(index, source="test", dimension_id=dim, generation=loc.generation)
    rows = np.frombuffer(index, layer_index.ROW_DTYPE, count=header.layer_count, offset=header.rows_offset)
    return index, header, rows


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import secrets

    from conftest import TEST_PREFIX
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with small_coordinator(name, tmp_path_factory.mktemp("text")) as coord:
        proto = coord.create_proto_dimension(1, "seed")
        proto.add_layer(1, "hello", keywords=["greeting"])
        proto.add_layer(2, "world")
        proto.add_layer(3, b"\xff\xfebinary")
        coord.crystallize(1)
        proto = coord.create_proto_dimension(2, "named")
        proto.add_layer(1, "plain")
        coord.crystallize(2)
        with shmpool.attach(name) as reader:
            _, _, rows = _index(coord, reader, 1)
            row1, row2 = rows[0], rows[1]
            coord._inst.view(int(row1["pool"]), int(row1["kw_start"]), 1)[0] = 0xFF  # a keyword
            coord._inst.view(int(row2["pool"]), int(row2["start"]), 1)[0] = 0xFF     # a text layer
            index, _, _ = _index(coord, reader, 2)
            index[layer_index.HEADER_SIZE] = 0xFF                                      # a dimension's name
        with shmpool.attach(name) as reader:
            yield reader


USES: dict[str, Callable[[shmpool.Reader], Any]] = {
    "keywords": lambda r: r.load_layer_context(1, 1).keywords,
    "scan_keyword": lambda r: list(r.scan(1, "greeting")),
    "text": lambda r: r.load_layer_context(1, 2).text,
    "format_lazy": lambda r: r.load_contexts([(1, 2)]).format_for_llm(),
    "format_eager": lambda r: (lambda c: (c.contexts, c.format_for_llm()))(r.load_contexts([(1, 2)])),
    "format_keywords": lambda r: r.load_contexts([(1, 1)]).format_for_llm(),
    "dimension_name": lambda r: r.load_layer_context(2, 1).dimension_name,
    "format_name": lambda r: r.load_contexts([(2, 1)]).format_for_llm(),
}


@pytest.mark.parametrize("use", sorted(USES))
def test_text_no_longer_utf8_in_shared_memory_is_refused_typed(corrupt: shmpool.Reader, use: str) -> None:
    with pytest.raises(RegionFormatError):
        USES[use](corrupt)


def test_a_binary_layers_text_is_still_the_callers_unicode_error(corrupt: shmpool.Reader) -> None:
    with pytest.raises(UnicodeDecodeError):
        corrupt.load_layer_context(1, 3).text
