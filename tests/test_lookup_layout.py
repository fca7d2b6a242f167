"""The compiled core's layer-index layout (shmpool/_core/_index_layout.pxd, exported as
``shmpool._core._lookup.LAYOUT``) is the one shmpool/data/layer_index.py and region.py define:
every slot word, row field offset, flag and separator, one by one."""

from __future__ import annotations

import numpy as np

from shmpool._core._lookup import LAYOUT
from shmpool.data import layer_index, region


def test_the_core_slot_layout_is_layer_index_s():
    assert LAYOUT["HEADER_BYTES"] == layer_index.HEADER_SIZE
    assert LAYOUT["SLOT_WORDS"] == layer_index.SLOT_WORDS
    assert LAYOUT["EMPTY"] == layer_index.EMPTY
    assert LAYOUT["POOL_BITS"] == layer_index.POOL_BITS and LAYOUT["POOL_MASK"] == layer_index.POOL_MASK
    # The slot words in the order build_table fills them: key, start, end, meta.
    table, _ = layer_index.build_table(np.array([5]), np.array([11]), np.array([22]), np.array([33]))
    slot = table[5 & (len(table) - 1)].tolist()
    assert [slot[LAYOUT[w]] for w in ("SLOT_KEY", "SLOT_START", "SLOT_END", "SLOT_META")] == [5, 11, 22, 33]
    assert table[0].tolist()[LAYOUT["SLOT_KEY"]] == LAYOUT["EMPTY"] == table[0].tolist()[LAYOUT["SLOT_META"]]


def test_the_core_row_offsets_are_row_dtype_s():
    fields = layer_index.ROW_DTYPE.fields
    assert LAYOUT["ROW_BYTES"] == layer_index.ROW_DTYPE.itemsize
    core = {name[len("ROW_"):].lower(): off for name, off in LAYOUT.items()
            if name.startswith("ROW_") and name != "ROW_BYTES"}
    assert core == {name: fields[name][1] for name in fields}
    sizes = {"layer_id": 8, "start": 8, "end": 8, "kw_start": 8, "kw_end": 8, "frequency": 8, "pool": 2,
             "flags": 2, "crc32": 4, "key_start": 8, "key_end": 8}  # the C reads of _lookup.pyx: memcpy of these many bytes
    assert {name: fields[name][0].itemsize for name in fields} == sizes
    assert fields["frequency"][0] == np.dtype("<f8") and fields["crc32"][0] == np.dtype("<u4")


def test_the_core_flags_and_separator_are_region_s():
    assert LAYOUT["FLAG_TEXT"] == region.FLAG_TEXT and LAYOUT["FLAG_ZSTD"] == region.FLAG_ZSTD
    assert LAYOUT["FLAG_KEYED"] == region.FLAG_KEYED
    assert LAYOUT["KEYWORD_SEPARATOR"] == region.KEYWORD_SEPARATOR
