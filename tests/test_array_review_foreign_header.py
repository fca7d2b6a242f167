"""A layer whose bytes start with numpy's .npy magic but describe no shareable array (an object
dtype, a zero itemsize, a negative or vast shape) makes ``array()`` raise InvalidLayer naming
the layer, not numpy's raw ValueError or OverflowError.

Such content need not come from encode(): any binary layer may start with the magic. Found by a
read-path review publishing crafted headers as plain bytes layers.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

import shmpool
from _small_coord import small_coordinator
from shmpool.errors import InvalidLayer


def _npy(header: dict[str, Any], data: bytes = b"") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + data


CONTENTS = {
    "object": _npy({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8),
    "record_of_objects": _npy({"descr": [("a", "|O")], "fortran_order": False, "shape": (1,)}, b"\0" * 8),
    "negative_shape": _npy({"descr": "<i4", "fortran_order": False, "shape": (0, -5)}),
    "two_unknowns": _npy({"descr": "<i4", "fortran_order": False, "shape": (-1, -1)}, b"\0" * 4),
    "zero_itemsize": _npy({"descr": "|V0", "fortran_order": False, "shape": (10**9,)}),
    "vast_empty_records": _npy({"descr": [], "fortran_order": False, "shape": (2**62, 2**62)}),
}


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import secrets

    from conftest import TEST_PREFIX
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with small_coordinator(name, tmp_path_factory.mktemp("npy")) as coord:
        proto = coord.create_proto_dimension(1, "foreign")
        for lid, content in enumerate(CONTENTS.values(), 1):
            proto.add_layer(lid, content)
        proto.add_layer(99, np.arange(6, dtype=np.int16).reshape(2, 3))
        coord.crystallize(1)
        with shmpool.attach(name) as r:
            yield r


@pytest.mark.parametrize("layer", list(enumerate(CONTENTS, 1)), ids=list(CONTENTS))
def test_a_foreign_npy_header_is_refused_typed(reader: shmpool.Reader, layer: tuple[int, str]) -> None:
    ctx = reader.load_layer_context(1, layer[0])
    assert ctx.is_array  # it does start with the magic
    with pytest.raises(InvalidLayer):
        ctx.array()


def test_an_array_layer_still_decodes(reader: shmpool.Reader) -> None:
    assert reader.load_layer_context(1, 99).array().tolist() == [[0, 1, 2], [3, 4, 5]]
