"""The core's checks of a layer index hold for any 64-bit field: sizes are bounded by the mapping
before they are multiplied or added, so no header and no ``probe`` argument can make the C code
read outside its buffer (an overflowed product passed the checks: a SIGSEGV, found by review).

The probe case runs in a child process, so that a regression is a failed test, not a dead
pytest worker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shmpool._core._lookup import Generation
from shmpool.data import layer_index
from shmpool.errors import RegionFormatError

PROBE = """
import numpy as np
from shmpool.data import layer_index
from shmpool.errors import InvalidArgument
table = np.full((8, 4), -1, dtype=np.int64)  # 8 slots, 256 bytes
for mask in ((1 << 59) - 1, (1 << 62) - 1, (1 << 63) - 1, 15):  # (mask + 1) * 32 wraps, or just too many
    try:
        layer_index.probe(table, mask, 1 << 40, 0)
    except InvalidArgument:
        continue
    raise SystemExit(f"mask {mask} was accepted")
print("refused", flush=True)
"""


def test_a_mask_larger_than_the_table_is_refused_not_read():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "refused", (done.returncode, done.stderr[-2000:])


def _header(**fields: int) -> layer_index.Header:
    base = {"magic": layer_index.MAGIC, "version": layer_index.VERSION, "name_length": 0, "dimension_id": 1,
            "generation": 1, "layer_count": 1, "slots": 8, "pools": 0, "rows_offset": layer_index.HEADER_SIZE,
            "table_offset": layer_index.HEADER_SIZE + 72, "nbytes": layer_index.HEADER_SIZE + 72 + 8 * 32,
            "max_probe": 0}
    return layer_index.Header(**{**base, **fields})


@pytest.mark.parametrize("fields", [
    {"slots": 1 << 58, "nbytes": layer_index.HEADER_SIZE + 72},          # slots * 32 wraps to 0
    {"slots": 1 << 59, "nbytes": layer_index.HEADER_SIZE + 72},
    {"layer_count": 1 << 58, "slots": 1 << 60},                          # count * 72 wraps
    {"rows_offset": (1 << 62), "table_offset": (1 << 62) + 72},          # offsets far past the mapping
    {"max_probe": 8},                                                    # a probe past one pass
    {"slots": 1},                                                        # no empty slot
    {"name_length": (1 << 63) - 50},                                     # name_at + name_length wraps
    {"name_length": -200, "rows_offset": -104, "table_offset": -32, "nbytes": 224},  # sections before it
    {"table_offset": 1 << 63},                                           # past int64: typed, not OverflowError
])
def test_a_header_whose_sizes_overflow_or_overreach_is_refused(fields):
    index = bytearray(4096)
    header = _header(**fields)
    with pytest.raises(RegionFormatError):
        Generation(1, 1, index, 0, len(index), header, [])


def test_an_index_range_that_wraps_is_refused():
    index = bytearray(4096)
    with pytest.raises(RegionFormatError):
        Generation(1, 1, index, 1 << 62, 1 << 62, _header(), [])  # offset + nbytes wraps past the mapping


def test_a_well_formed_header_is_accepted():
    index = bytearray(4096)
    gen = Generation(1, 1, index, 0, len(index), _header(), [])
    assert gen.mask == 7 and gen.max_probe == 0
