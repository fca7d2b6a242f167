"""RegionBuilder: collects one dimension's layers on the heap and writes them as a version-2 region.

Writing is a pure copy: every CRC32 is computed when a layer is added, and the header, names,
keywords and index (all small) are assembled once per change of the layer set. ``write_into``
puts the region straight into a caller's buffer (a shared-memory block at crystallization) with
one slice assignment per layer; ``write`` streams it to a file atomically.
"""

from __future__ import annotations

import codecs
import math
import numbers
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
from ..substrate._log import logger

from . import arrays
from ..errors import InvalidArgument, InvalidArgumentType, InvalidLayer
from ..substrate.ids import LayerKey, as_id
from .compression import deflate
from .region import (
    FLAG_KEYED, FLAG_TEXT, FLAG_ZSTD, FORMAT_VERSION, HEADER, HEADER_SIZE, INDEX_DTYPE, KEYWORD_SEPARATOR, MAGIC, MAX_NAME_BYTES,
    align, byte_view, meta_crc,
)

__all__ = ["RegionBuilder", "write_atomically", "keyword_tuple"]

_U32 = 2**32
_ZEROS = bytes(8)  # padding never exceeds ALIGN - 1 bytes

# One pending layer. ``content`` is immutable bytes: a bytearray the caller mutates later must not
# disagree with the CRC taken now.
# ``content`` is what gets stored: the raw bytes, or their compressed form when ``zstd``.
class _Layer(NamedTuple):
    content: bytes
    text: bool
    crc: int
    frequency: float
    keywords: tuple[str, ...]
    keyword_bytes: bytes
    zstd: bool
    key: bytes | None = None  # a keyed layer's key text (UTF-8), stored with it and compared by lookups


class _Plan(NamedTuple):
    """What writing needs: the metadata prefix (header .. end of index) and (offset, content) per layer."""

    prefix: bytes
    layers: list[tuple[int, bytes]]
    nbytes: int


class RegionBuilder:
    """The layers of one dimension, to be written as a region. Not thread-safe.

    ``add_layer`` validates and raises InvalidLayer naming the layer; the constructor raises
    TypeError / ValueError for a bad dimension id or name.
    """

    def __init__(self, dimension_id: int, name: str) -> None:
        dimension_id = as_id(dimension_id, "dimension_id")
        if not 0 < dimension_id < _U32:
            raise InvalidArgument(argument="dimension_id", value=dimension_id, reason="out of range: must satisfy 0 < id < 2**32")
        if not isinstance(name, str):
            raise InvalidArgumentType(argument="name", value=name, reason=f"dimension {dimension_id}: a name must be a str")
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(argument="name", value=name,
                                  reason=f"dimension {dimension_id}: not encodable as UTF-8 ({exc.reason})") from None
        if len(encoded) > MAX_NAME_BYTES:
            raise InvalidArgument(argument="name", value=name[:40] + "...",
                                  reason=f"dimension {dimension_id}: a name is at most {MAX_NAME_BYTES} UTF-8 bytes, "
                                         f"this one {len(encoded)}")
        self.dimension_id = int(dimension_id)
        self.name = name
        self._name = encoded
        self._layers: dict[int, _Layer] = {}
        self._keyword_bytes = 0
        self._plan: _Plan | None = None

    # ----------------------------------------------------------------- the layer set

    def add_layer(self, layer_id: int | str, content: Any, *, frequency: float = 0.0,
                  keywords: Iterable[str] = (), text: bool | None = None, compress: bool = False) -> None:
        """Add one layer: ``str`` is stored as UTF-8 text, any byte buffer as binary; empty allowed.

        ``text=True`` marks UTF-8 bytes as text (they are checked). ``compress=True`` stores the
        layer zstd-compressed when that saves at least 10% (see shmpool.data.compression); lookups
        then return a decompressed copy. Raises InvalidLayer for a bad or duplicate id, content,
        frequency or keyword.
        """
        def bad(reason: str) -> InvalidLayer:
            return InvalidLayer(dimension_id=self.dimension_id, layer_id=layer_id, reason=reason)

        if isinstance(layer_id, str):  # a key stands for its key id, and keeps its text (shmpool.substrate.ids)
            layer_id = LayerKey(layer_id)
        key = layer_id.utf8 if type(layer_id) is LayerKey else None
        if key is not None:
            try:
                codecs.utf_8_decode(key, "strict", True)
            except UnicodeDecodeError as exc:
                raise bad(f"key is not encodable as UTF-8 ({exc.reason})") from None
        if isinstance(layer_id, bool) or not isinstance(layer_id, numbers.Integral):
            raise bad(f"layer id must be an int or a str key, got {type(layer_id).__name__}")
        layer_id = int(layer_id)
        if not 0 <= layer_id < 2**63:
            raise bad("layer id must satisfy 0 <= id < 2**63")
        if layer_id in self._layers:
            raise bad(self._duplicate(layer_id, key))
        if isinstance(frequency, bool) or not isinstance(frequency, numbers.Real):
            raise bad(f"frequency must be a real number, got {frequency!r}")
        frequency = float(frequency)
        if not math.isfinite(frequency):
            raise bad(f"frequency {frequency} is not finite")
        keywords = keyword_tuple(self.dimension_id, layer_id, keywords)
        for kw in keywords:
            if not isinstance(kw, str) or not kw or KEYWORD_SEPARATOR in kw:
                raise bad(f"keyword {kw!r} must be a non-empty str without {KEYWORD_SEPARATOR!r}")
        try:
            keyword_bytes = KEYWORD_SEPARATOR.join(keywords).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad(f"keywords are not encodable as UTF-8 ({exc.reason})") from None
        if self._keyword_bytes + len(keyword_bytes) + len(key or b"") >= _U32:
            raise bad("the keyword blob (keywords and keys) would exceed 4 GiB (its offsets are 32-bit)")
        if len(self._layers) + 1 >= _U32:
            raise bad("a region holds fewer than 2**32 layers")
        if isinstance(content, np.ndarray):  # its .npy bytes: dtype and shape travel with it
            content = arrays.encode(content, dimension_id=self.dimension_id, layer_id=layer_id)
        is_str = isinstance(content, str)
        if is_str:
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise bad(f"text is not encodable as UTF-8 ({exc.reason} at character {exc.start})") from None
        elif isinstance(content, bytes):
            data = content
        elif isinstance(content, (int, float)) or content is None:
            raise bad(f"content must be str or a bytes-like object, got {type(content).__name__}")
        else:
            try:
                data = memoryview(content).tobytes()  # a private copy: see _Layer
            except TypeError:
                raise bad(f"content must be str or a bytes-like object, got {type(content).__name__}") from None
        if text is not None and text is not is_str:
            if not text:
                raise bad("text=False contradicts str content")
            try:
                codecs.utf_8_decode(data, "strict", True)
            except UnicodeDecodeError as exc:
                raise bad(f"text=True but the bytes are not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        stored = deflate(data) if compress else None
        self._layers[layer_id] = _Layer(data if stored is None else stored, bool(text) or is_str, zlib.crc32(data),
                                        frequency, keywords, keyword_bytes, stored is not None, key)
        self._keyword_bytes += len(keyword_bytes) + len(key or b"")
        self._plan = None

    def _duplicate(self, layer_id: int, key: bytes | None) -> str:
        """Why ``layer_id`` cannot be added: a second layer of that id, or a key colliding with another."""
        held = self._layers[layer_id].key
        if key is not None and held != key:
            other = "a layer added by its bare id" if held is None else f"key {held.decode('utf-8')!r}"
            return (f"key {key.decode('utf-8', 'surrogatepass')!r} has key id {layer_id}, as {other} has: "
                    "one of them needs another key")
        return "duplicate layer id"

    def add_stored(self, layer_id: int, stored: bytes, *, text: bool, zstd: bool, crc: int, frequency: float,
                   keyword_bytes: bytes, key: bytes | None = None) -> None:
        """Add a layer exactly as another region stored it (already validated there): ``stored``
        is its raw or compressed form, ``crc`` the CRC32 of the uncompressed content, ``key`` the
        UTF-8 text of its key (None for a layer added by an int id)."""
        if layer_id in self._layers:
            raise InvalidLayer(dimension_id=self.dimension_id, layer_id=layer_id, reason="duplicate layer id")
        keywords = tuple(k for k in keyword_bytes.decode("utf-8").split(KEYWORD_SEPARATOR) if k)
        self._layers[layer_id] = _Layer(bytes(stored), text, crc, float(frequency), keywords, keyword_bytes, zstd,
                                        None if key is None else bytes(key))
        self._keyword_bytes += len(keyword_bytes) + len(key or b"")
        self._plan = None

    def key_of(self, layer_id: int) -> bytes | None:
        """The key text (UTF-8) of layer ``layer_id``, None if it was added by an int id; KeyError if absent."""
        return self._layers[layer_id].key

    def copy(self) -> "RegionBuilder":
        """A builder of the same layers (their bytes shared: they are immutable), to write while
        this one goes on changing. A RegionBuilder is not thread-safe: one thread's add_layer
        during another's write_into could cache a layout of the old layer set for good."""
        twin = RegionBuilder.__new__(RegionBuilder)
        twin.__dict__.update(self.__dict__)
        twin._layers = dict(self._layers)
        return twin

    def stored_layers(self) -> list[tuple[int, Any]]:
        """(layer id, layer as stored) in id order: what an edit writes (shmpool.coordinator.publisher)."""
        return sorted(self._layers.items())

    def remove_layer(self, layer_id: int | str) -> None:
        """Remove one layer (by id, or by key: its text must match). Raises InvalidLayer if it is not there."""
        lid = LayerKey(layer_id) if isinstance(layer_id, str) else layer_id
        layer = self._layers.get(lid)
        if layer is None or (type(lid) is LayerKey and layer.key != lid.utf8):
            raise InvalidLayer(dimension_id=self.dimension_id, layer_id=lid, reason="no such layer to remove")
        del self._layers[lid]
        self._keyword_bytes -= len(layer.keyword_bytes) + len(layer.key or b"")
        self._plan = None

    def layer_ids(self) -> list[int]:
        """Layer ids, ascending (the order of the index)."""
        return sorted(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __contains__(self, layer_id: object) -> bool:
        return layer_id in self._layers

    def __repr__(self) -> str:
        return f"<RegionBuilder dimension {self.dimension_id} {self.name!r}: {len(self)} layers>"

    # ----------------------------------------------------------------- writing

    def nbytes(self) -> int:
        """Exact size of the region this builder writes now."""
        return self._layout().nbytes

    def write_into(self, buffer: Any) -> int:
        """Write the region at the start of a writable buffer of at least :meth:`nbytes`; returns nbytes.

        Every byte of ``[0, nbytes)`` is written (padding included), so the buffer may hold garbage;
        bytes past nbytes are left alone. One slice assignment per layer: memcpy speed.
        """
        plan = self._layout()
        try:
            view = byte_view(buffer)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentType(argument="buffer", value=type(buffer).__name__,
                                      reason=f"write_into needs a writable contiguous byte buffer: {exc}") from None
        with view:
            if view.readonly:
                raise InvalidArgumentType(argument="buffer", value=type(buffer).__name__,
                                          reason="write_into needs a writable buffer, got a read-only one")
            if len(view) < plan.nbytes:
                raise InvalidArgument(argument="buffer", value=f"{len(view)} bytes",
                                      reason=f"too small for the {plan.nbytes}-byte region of dimension "
                                             f"{self.dimension_id}")
            at = len(plan.prefix)
            view[:at] = plan.prefix
            for offset, content in plan.layers:
                if offset > at:  # the buffer may hold garbage: padding is written, not assumed
                    view[at:offset] = _ZEROS[:offset - at]
                at = offset + len(content)
                view[offset:at] = content
        return plan.nbytes

    def to_bytes(self) -> bytes:
        """The region as one bytes object."""
        out = bytearray(self.nbytes())
        self.write_into(out)
        return bytes(out)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the region to ``path`` atomically: temp file in the same folder, fsync, os.replace.

        Readers see the old file or the new one, never a torn one; on any failure the temp file is
        removed and the error propagates. The file is created with mode 0644.
        """
        return write_atomically(path, self._pieces(), mode=0o644)  # 0644: readable by other users

    def _pieces(self) -> Iterator[bytes]:
        plan = self._layout()
        yield plan.prefix
        at = len(plan.prefix)
        for offset, content in plan.layers:
            if offset > at:
                yield _ZEROS[:offset - at]
            yield content
            at = offset + len(content)

    def _layout(self) -> _Plan:
        """Header, name, keywords and index as bytes, and where each layer goes; cached per layer set."""
        if self._plan is not None:
            return self._plan
        ids = sorted(self._layers)
        layers = [self._layers[i] for i in ids]
        # The blob: every layer's keywords, then every keyed layer's key text.
        kw_blob = b"".join(layer.keyword_bytes for layer in layers)
        blob = kw_blob + b"".join(layer.key or b"" for layer in layers)
        index_offset = align(HEADER_SIZE + len(self._name) + len(blob))
        content_offset = index_offset + len(ids) * INDEX_DTYPE.itemsize
        offsets, at = [], content_offset
        for layer in layers:
            offsets.append(at)
            at = align(at + len(layer.content))
        # The region ends right after the last byte of content; no trailing padding.
        nbytes = offsets[-1] + len(layers[-1].content) if layers else content_offset
        index = np.zeros(len(ids), dtype=INDEX_DTYPE)
        index["layer_id"] = ids
        index["flags"] = [(FLAG_TEXT if layer.text else 0) | (FLAG_ZSTD if layer.zstd else 0)
                          | (0 if layer.key is None else FLAG_KEYED) for layer in layers]
        index["crc32"] = [layer.crc for layer in layers]
        index["offset"] = offsets
        index["length"] = [len(layer.content) for layer in layers]
        index["frequency"] = [layer.frequency for layer in layers]
        kw_lengths = [len(layer.keyword_bytes) for layer in layers]
        index["kw_length"] = kw_lengths
        index["kw_offset"] = np.cumsum([0] + kw_lengths[:-1]) if layers else []
        key_lengths = [len(layer.key or b"") for layer in layers]
        index["key_length"] = key_lengths
        if layers:  # the keys follow every keyword; a layer without a key has offset 0
            key_offsets = len(kw_blob) + np.cumsum([0] + key_lengths[:-1])
            index["key_offset"] = np.where([layer.key is not None for layer in layers], key_offsets, 0)
        meta = self._name + blob
        index_bytes = index.tobytes()
        fields = [MAGIC, FORMAT_VERSION, 0, HEADER_SIZE, self.dimension_id, len(ids), len(self._name),
                  len(blob), index_offset, content_offset, nbytes, 0, 0]
        fields[-2] = meta_crc(HEADER.pack(*fields), meta, index_bytes)
        pad = bytes(index_offset - HEADER_SIZE - len(meta))
        prefix = b"".join((HEADER.pack(*fields), meta, pad, index_bytes))
        self._plan = _Plan(prefix, list(zip(offsets, (layer.content for layer in layers))), nbytes)
        return self._plan


def keyword_tuple(dimension_id: int, layer_id: int, keywords: Any) -> tuple[Any, ...]:
    """``keywords`` as a tuple; InvalidLayer if it is a single str or bytes, or not iterable.

    A str is iterable, so ``keywords="river"`` would otherwise become five one-letter keywords.
    The items themselves are checked by ``RegionBuilder.add_layer``.
    """
    if isinstance(keywords, (str, bytes, bytearray, memoryview)):
        reason = f"keywords must be a list of strings, not a single {type(keywords).__name__} ({keywords!r})"
    else:
        try:
            return tuple(keywords)
        except TypeError:
            reason = f"keywords must be a list of strings, not {type(keywords).__name__}"
    raise InvalidLayer(dimension_id=dimension_id, layer_id=layer_id, reason=reason)


def write_atomically(path: str | os.PathLike[str], pieces: Iterable[Any], *, mode: int) -> Path:
    """Write ``pieces`` (bytes-like) to ``path`` atomically: temp file in the same folder, fsync,
    os.replace, fsync of the folder. Readers see the old file or the new one, never a torn one;
    on any failure the temp file is removed and the error propagates."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError as exc:
            logger.debug("could not remove temporary file {}: {}", tmp, exc)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; best effort (some file systems refuse O_RDONLY on folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        logger.debug("cannot open {} to fsync it: {}", directory, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("fsync of directory {} failed: {}", directory, exc)
    finally:
        os.close(fd)
