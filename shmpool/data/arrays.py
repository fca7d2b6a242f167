"""numpy arrays as layers: published from an ``ndarray``, read back as a read-only view of it.

An array layer's content is the array in numpy's own ``.npy`` format (version 1.0, or 2.0 for a
header past 64 KiB): the magic, a header naming dtype, shape and order, padded so the data starts
64 bytes in, then the raw data. Layer content starts 8-aligned in a region and regions start on a
block boundary, so the data is aligned for every dtype whose alignment is at most 8 (all but
``longdouble`` and its complex twin; numpy reads those unaligned). Reading it back is
``np.frombuffer`` on the layer's view: no copy, the dtype, shape and order it was published with.

Because the metadata travels inside the content, every path that carries layers carries arrays
unchanged: region files, crystallize, edits, snapshots, eviction and reload. Rejected: a dtype and
shape column in the layer index (a region format change on the read path, for what the content
can say itself), and pickling (an object array is refused: only fixed-size dtypes are shared).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from ..errors import InvalidLayer

__all__ = ["NPY_MAGIC", "decode", "encode", "is_array"]

NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 20  # bytes of header read to parse it: far beyond any dtype description in use


def encode(array: np.ndarray, *, dimension_id: int, layer_id: Any) -> bytes:
    """The content of a layer holding ``array`` (C or Fortran order kept; any other layout copied C)."""
    if array.dtype.hasobject:
        raise InvalidLayer(dimension_id=dimension_id, layer_id=layer_id,
                           reason=f"an array of dtype {array.dtype} holds Python objects, which cannot be "
                                  "shared; only fixed-size dtypes can (numbers, bools, fixed-width strings, "
                                  "datetimes, structured records of these)")
    fortran = array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": fortran,
              "shape": array.shape}
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # a header past 64 KiB (a very wide structured dtype)
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    out.write(array.tobytes(order="F" if fortran else "C"))
    return out.getvalue()


def is_array(content: memoryview) -> bool:
    """Whether ``content`` is a layer published from an array (it starts with the .npy magic)."""
    return len(content) >= len(NPY_MAGIC) + 2 and content[:len(NPY_MAGIC)] == NPY_MAGIC


def decode(content: memoryview, *, dimension_id: int, layer_id: Any) -> np.ndarray:
    """The array a layer holds, as a view of ``content`` (read-only if ``content`` is)."""
    if not is_array(content):
        raise InvalidLayer(dimension_id=dimension_id, layer_id=layer_id,
                           reason="it was not published from a numpy array (use .content or .text)")
    head = io.BytesIO(content[:_MAX_HEADER].tobytes())
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    except ValueError as exc:
        raise InvalidLayer(dimension_id=dimension_id, layer_id=layer_id,
                           reason=f"its array header is unreadable: {exc}") from None
    # The header is the layer's bytes, which need not be what encode() wrote (a binary layer
    # that merely starts with the magic, or a foreign writer's): numpy's own refusals below it
    # (an object dtype, a zero itemsize, a negative or vast shape) are raw ValueErrors and
    # OverflowErrors, so each is refused here first, by name.
    if dtype.hasobject or dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise InvalidLayer(dimension_id=dimension_id, layer_id=layer_id,
                           reason=f"its array header describes no shareable array (dtype {dtype}, shape {shape})")
    offset = head.tell()
    count = math.prod(shape)
    if offset + count * dtype.itemsize != len(content):
        raise InvalidLayer(dimension_id=dimension_id, layer_id=layer_id,
                           reason=f"its array header says {count} x {dtype.itemsize} bytes, the layer holds "
                                  f"{len(content) - offset}")
    flat = np.frombuffer(content, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")
