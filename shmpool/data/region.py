"""The region format (version 2) and :class:`Region`, its validating zero-copy reader.

A region holds ONE dimension: a 64-byte header, the dimension name and the keyword blob (which
also holds the keyed layers' key texts), a layer index of 56-byte rows sorted by layer id, then
the layers' content. Every offset is ABSOLUTE
(from the region's first byte), so a region is position independent: the coordinator copies a
region file verbatim into a shared-memory block and readers parse it there. docs/region-format.md
lists the same fields in the same order; change both together.

Version 2 added each keyed layer's key text (FLAG_KEYED, ``key_offset``/``key_length``): a lookup
by key compares it, so a key whose id merely collides with a present one's is not found. Version 1
files (no key texts: their keyed layers could only be found by hash) are refused, naming the
version; rebuild them with this release's RegionBuilder or ``shmpool build``.

Lifetime rule: every memoryview or array a Region hands out (:meth:`Region.layer`,
``Region.buffer``, ``Region.index``) is a window on the Region's buffer and must not be used after
:meth:`Region.close`. Nothing crashes if one is kept (the buffer protocol keeps the memory mapped
while any view exists), but the file mapping then lives on until the last view is dropped.
"""

from __future__ import annotations

import codecs
import mmap
import os
import stat
import struct
import weakref
import zlib
from typing import Any, NamedTuple

import numpy as np
from ..substrate._log import logger

from . import layer_index
from .compression import inflate
from ..errors import InvalidArgument, LayerNotFound, RegionClosed, RegionFormatError, ShmPoolError
from ..substrate.ids import LayerKey, key_id

__all__ = [
    "ALIGN", "FLAG_KEYED", "FLAG_TEXT", "FLAG_ZSTD", "FORMAT_VERSION", "HEADER", "HEADER_OFFSETS", "HEADER_SIZE", "INDEX_DTYPE",
    "KEYWORD_SEPARATOR", "MAGIC", "MAX_NAME_BYTES", "Header", "Region", "align", "meta_crc",
]

MAGIC = b"SHMPRGN1"
FORMAT_VERSION = 2
ALIGN = 8                  # index, content area and every layer start on a multiple of this
MAX_NAME_BYTES = 255       # UTF-8 bytes of a dimension name
FLAG_TEXT = 1              # index flags bit 0: the content is UTF-8 text
FLAG_ZSTD = 2              # bit 1: stored as u64 raw length + zstd frame (shmpool.data.compression)
FLAG_KEYED = 4             # bit 2: added by a str key, whose text key_offset/key_length locate
KNOWN_LAYER_FLAGS = FLAG_TEXT | FLAG_ZSTD | FLAG_KEYED
KEYWORD_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur inside a keyword

# The header, in byte order. '<' = little-endian, no padding: the offsets below are exact.
_HEADER_FIELDS = (
    ("magic", "8s"),           # MAGIC: refuses foreign files before any other field is trusted
    ("version", "H"),          # FORMAT_VERSION; a reader refuses versions it does not know
    ("flags", "H"),            # none defined (version 2); must be 0 so a future flag is never ignored
    ("header_size", "I"),      # 64; lets a later version grow the header detectably
    ("dimension_id", "I"),     # the dimension this region holds, 1 .. 2**32-1 (0 is reserved)
    ("layer_count", "I"),      # rows in the layer index
    ("name_length", "I"),      # bytes of the UTF-8 dimension name that follows the header, <= 255
    ("keywords_length", "I"),  # bytes of the keyword blob that follows the name
    ("index_offset", "Q"),     # absolute offset of the layer index, 8-aligned
    ("content_offset", "Q"),   # absolute offset of the content area, 8-aligned, after the index
    ("region_length", "Q"),    # bytes in the whole region; must equal the buffer's length
    ("meta_crc", "I"),         # CRC32 of header (this field zeroed) + name + keyword blob + index
    ("reserved", "I"),         # zero: pads the header to 64 bytes, room for a compatible extension
)
HEADER = struct.Struct("<" + "".join(code for _, code in _HEADER_FIELDS))
HEADER_SIZE = HEADER.size
HEADER_OFFSETS = {name: struct.calcsize("<" + "".join(c for _, c in _HEADER_FIELDS[:i]))
                  for i, (name, _) in enumerate(_HEADER_FIELDS)}


class Header(NamedTuple):
    """The header unpacked, one attribute per ``_HEADER_FIELDS`` entry in the same order (asserted)."""

    magic: bytes
    version: int
    flags: int
    header_size: int
    dimension_id: int
    layer_count: int
    name_length: int
    keywords_length: int
    index_offset: int
    content_offset: int
    region_length: int
    meta_crc: int
    reserved: int


assert Header._fields == tuple(name for name, _ in _HEADER_FIELDS)
_CRC_AT = HEADER_OFFSETS["meta_crc"]
_CRC_FIELD = struct.Struct("<I")
assert HEADER_SIZE == 64 and _CRC_AT == 56

# One row per layer, sorted strictly ascending by layer_id. Natural alignment, no holes: 56 bytes.
INDEX_DTYPE = np.dtype([
    ("layer_id", "<u8"),   # the key; strictly ascending, < 2**63 so it fits every signed int64
    ("flags", "<u4"),      # bit 0 FLAG_TEXT, bit 1 FLAG_ZSTD; others must be 0 so a future flag is never ignored
    ("crc32", "<u4"),      # zlib.crc32 of the (uncompressed) content: checked at load and by verify
    ("offset", "<u8"),     # ABSOLUTE offset of the content, 8-aligned, inside the content area
    ("length", "<u8"),     # content bytes; 0 is allowed (an empty layer occupies no bytes)
    ("frequency", "<f8"),  # caller-defined weight; finite
    ("kw_offset", "<u4"),  # this layer's keywords: start in the keyword blob ...
    ("kw_length", "<u4"),  # ... and length; KEYWORD_SEPARATOR-joined UTF-8, 0 = no keywords
    ("key_offset", "<u4"), # FLAG_KEYED: the key's UTF-8 text, start in the keyword blob ...
    ("key_length", "<u4"), # ... and length (0 for the empty key; both 0 without FLAG_KEYED)
])
assert INDEX_DTYPE.itemsize == 56


def align(n: int) -> int:
    """``n`` rounded up to the next multiple of :data:`ALIGN`."""
    return -(-n // ALIGN) * ALIGN


def byte_view(buffer: Any) -> memoryview:
    """A flat unsigned-byte memoryview of ``buffer``; TypeError or ValueError if it is not
    contiguous memory."""
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise InvalidArgument(argument="buffer", value=view, reason="strided memory: a contiguous buffer is needed")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def meta_crc(header: Any, meta: Any, index: Any) -> int:
    """CRC32 over the header (its ``meta_crc`` field read as zero), the name + keyword blob, the index.

    Shared by the writer and the reader so that both always cover the same bytes.
    """
    crc = zlib.crc32(header[:_CRC_AT])
    crc = zlib.crc32(b"\0\0\0\0", crc)
    crc = zlib.crc32(header[_CRC_AT + 4:HEADER_SIZE], crc)
    return zlib.crc32(index, zlib.crc32(meta, crc))


class _Views:
    """What a Region must let go of, in order: the index array, then its view, then the mapping."""

    __slots__ = ("index", "view", "mapping")

    def __init__(self, index: np.ndarray | None, view: memoryview | None, mapping: mmap.mmap | None) -> None:
        self.index, self.view, self.mapping = index, view, mapping


def _release(views: _Views, source: str) -> None:
    views.index = None
    try:
        if views.view is not None:
            views.view.release()
        if views.mapping is not None:
            views.mapping.close()
    except BufferError as exc:
        # A caller still holds a view. The buffer protocol keeps the memory mapped until the last
        # view is dropped; the mapping object unmaps itself then. Nothing dangles.
        logger.debug("{}: views still alive at close, unmapping deferred to their release: {}", source, exc)


class _Parsed(NamedTuple):
    header: Header
    name: str
    rows: np.ndarray  # the layer index (not "index": that is tuple.index)
    keywords_at: int


_ROW = INDEX_DTYPE.itemsize
_COLUMN_AT = {name: spec[1] for name, spec in (INDEX_DTYPE.fields or {}).items()}  # byte offset in a row


def split_keywords(raw: Any) -> tuple[str, ...]:
    """A layer's keyword bytes as a tuple of str; raises UnicodeDecodeError if not UTF-8."""
    text = codecs.utf_8_decode(raw, "strict", True)[0]
    # Empty pieces (a stray separator) are dropped rather than refused: harmless, and refusing
    # them would cost a scan of every keyword slice at validation.
    return tuple(k for k in text.split(KEYWORD_SEPARATOR) if k)


def _check_region(mv: memoryview, source: str, verify: bool) -> _Parsed:
    """Validate a whole region; the order matters: no numpy view exists before every area is in bounds."""

    def fault(text: str, offset: int | None = None) -> RegionFormatError:
        return RegionFormatError(source=source, fault=text, offset=offset)

    size, at = len(mv), HEADER_OFFSETS
    if size < HEADER_SIZE:
        raise fault("empty buffer" if size == 0 else f"{size} bytes is too short for the {HEADER_SIZE}-byte header", 0)
    h = Header._make(HEADER.unpack_from(mv, 0))
    if h.magic != MAGIC:
        raise fault(f"bad magic {h.magic!r}, expected {MAGIC!r}: not a region", 0)
    if h.version != FORMAT_VERSION:
        rebuild = "; rebuild it with this release's RegionBuilder or `shmpool build`" if h.version < FORMAT_VERSION else ""
        raise fault(f"format version {h.version} is not supported (this reader knows {FORMAT_VERSION}){rebuild}",
                    at["version"])
    if h.flags:
        raise fault(f"unknown header flags {h.flags:#06x}", at["flags"])
    if h.header_size != HEADER_SIZE:
        raise fault(f"header size {h.header_size}, expected {HEADER_SIZE}", at["header_size"])
    if h.reserved:
        raise fault(f"reserved header bytes are not zero ({h.reserved:#010x})", at["reserved"])
    if h.dimension_id == 0:
        raise fault("dimension id 0 is reserved", at["dimension_id"])
    if h.name_length > MAX_NAME_BYTES:
        raise fault(f"name length {h.name_length} exceeds {MAX_NAME_BYTES} bytes", at["name_length"])
    if h.region_length != size:
        raise fault(f"header says the region is {h.region_length} bytes but the buffer holds {size} "
                    f"(truncated or padded)", at["region_length"])
    # Every declared area inside the buffer, in Python ints (no wrap-around), before any view or
    # allocation depends on a length field: a huge layer_count fails here, it is never allocated.
    keywords_at = HEADER_SIZE + h.name_length
    meta_end = keywords_at + h.keywords_length
    index_end = h.index_offset + h.layer_count * _ROW
    if meta_end > size:
        raise fault(f"name and keyword blob end at byte {meta_end}, past the region end {size}",
                    at["keywords_length"])
    if h.index_offset % ALIGN or h.index_offset < meta_end:
        raise fault(f"index offset {h.index_offset} is not {ALIGN}-aligned at or after the end of the "
                    f"name and keywords ({meta_end})", at["index_offset"])
    if h.content_offset % ALIGN:
        raise fault(f"content offset {h.content_offset} is not {ALIGN}-aligned", at["content_offset"])
    if h.content_offset > size:
        raise fault(f"content offset {h.content_offset} lies past the region end ({size} bytes)",
                    at["content_offset"])
    if index_end > h.content_offset:
        raise fault(f"index of {h.layer_count} rows ends at byte {index_end}, past the content offset "
                    f"{h.content_offset}", at["layer_count"])
    crc = meta_crc(mv, mv[HEADER_SIZE:meta_end], mv[h.index_offset:index_end])
    if crc != h.meta_crc:
        raise fault(f"metadata checksum mismatch: header says crc32 {h.meta_crc:#010x}, header, name, "
                    f"keywords and index hash to {crc:#010x}", at["meta_crc"])
    try:
        name = codecs.utf_8_decode(mv[HEADER_SIZE:keywords_at], "strict", True)[0]
    except UnicodeDecodeError as exc:
        raise fault(f"dimension name is not valid UTF-8 ({exc.reason})", HEADER_SIZE + exc.start) from None
    try:
        codecs.utf_8_decode(mv[keywords_at:meta_end], "strict", True)
    except UnicodeDecodeError as exc:
        raise fault(f"keyword blob is not valid UTF-8 ({exc.reason})", keywords_at + exc.start) from None
    index = np.frombuffer(mv, INDEX_DTYPE, count=h.layer_count, offset=h.index_offset)
    _check_index(mv, index, h, keywords_at, fault)
    if verify:
        _check_keys(mv, index, keywords_at, source)
        _check_content(mv, index, source)
    return _Parsed(h, name, index, keywords_at)


def _check_index(mv: memoryview, index: np.ndarray, h: Header, keywords_at: int, fault: Any) -> None:
    """Vectorised checks of every row; each fault names the first offending layer id."""

    def first(bad: np.ndarray) -> int | None:
        rows = np.flatnonzero(bad)
        return int(rows[0]) if rows.size else None

    def at(row: int, field: str) -> int:
        return h.index_offset + row * _ROW + _COLUMN_AT[field]

    ids = index["layer_id"]
    if len(index) > 1 and (r := first(ids[1:] <= ids[:-1])) is not None:
        prev, cur = int(ids[r]), int(ids[r + 1])
        if prev == cur:
            raise fault(f"duplicate layer id {cur} (rows {r} and {r + 1})", at(r + 1, "layer_id"))
        raise fault(f"layer ids are not sorted ascending: row {r + 1} holds {cur} after {prev}",
                    at(r + 1, "layer_id"))
    if len(index) and int(ids[-1]) >= 2**63:  # sorted, so the last id is the largest
        raise fault(f"layer id {int(ids[-1])} exceeds 2**63-1", at(len(index) - 1, "layer_id"))
    flags = index["flags"]
    if (r := first(flags & np.uint32(~KNOWN_LAYER_FLAGS & 0xFFFFFFFF))) is not None:
        raise fault(f"layer {int(ids[r])} has unknown flags {int(flags[r]):#x}", at(r, "flags"))
    if (r := first(~np.isfinite(index["frequency"]))) is not None:
        raise fault(f"layer {int(ids[r])} frequency {float(index['frequency'][r])} is not finite",
                    at(r, "frequency"))
    off, length, size = index["offset"], index["length"], np.uint64(len(mv))
    if (r := first(off % np.uint64(ALIGN))) is not None:
        raise fault(f"layer {int(ids[r])} offset {int(off[r])} is not {ALIGN}-aligned", at(r, "offset"))
    if (r := first(off < np.uint64(h.content_offset))) is not None:
        raise fault(f"layer {int(ids[r])} starts at byte {int(off[r])}, before the content area at "
                    f"{h.content_offset}", at(r, "offset"))
    # u8 arithmetic that cannot wrap: length is compared with the room left, never added first.
    if (r := first((off > size) | (length > size - np.minimum(off, size)))) is not None:
        raise fault(f"layer {int(ids[r])} bytes [{int(off[r])}, {int(off[r]) + int(length[r])}) run past "
                    f"the region end {len(mv)}", at(r, "length"))
    rows = np.flatnonzero(length)  # empty layers occupy no bytes, so they overlap nothing
    rows = rows[np.argsort(off[rows], kind="stable")]
    ends = off[rows] + length[rows]  # in bounds now, so no wrap
    if (r := first(off[rows][1:] < ends[:-1])) is not None:
        a, b = int(rows[r]), int(rows[r + 1])
        raise fault(f"layers {int(ids[a])} and {int(ids[b])} overlap: [{int(off[a])}, {int(ends[r])}) and "
                    f"[{int(off[b])}, {int(ends[r + 1])})", at(b, "offset"))
    blob_len = h.keywords_length
    # The blob as a whole decodes, so a slice decodes iff neither end falls inside a multi-byte
    # character, i.e. on a continuation byte 0b10xxxxxx. One vectorised test instead of a decode per row.
    inside = np.zeros(blob_len + 1, dtype=bool)
    blob = np.frombuffer(mv, np.uint8, count=blob_len, offset=keywords_at)
    inside[:blob_len] = (blob & 0xC0) == 0x80
    unkeyed = (flags & np.uint32(FLAG_KEYED)) == 0
    if (r := first(unkeyed & ((index["key_offset"] | index["key_length"]) != 0))) is not None:
        raise fault(f"layer {int(ids[r])} locates a key but has no FLAG_KEYED", at(r, "key_offset"))
    for what, start_field, length_field in (("keywords", "kw_offset", "kw_length"), ("key", "key_offset", "key_length")):
        kw_off = index[start_field].astype(np.uint64)
        kw_end = kw_off + index[length_field]  # each u4, so the u8 sum cannot wrap
        if (r := first(kw_end > np.uint64(blob_len))) is not None:
            raise fault(f"layer {int(ids[r])} {what} [{int(kw_off[r])}, {int(kw_end[r])}) fall outside the "
                        f"keyword blob of {blob_len} bytes", at(r, start_field))
        if (r := first((kw_end > kw_off) & (inside[kw_off] | inside[kw_end]))) is not None:
            raise fault(f"layer {int(ids[r])} {what} [{int(kw_off[r])}, {int(kw_end[r])}) split a UTF-8 "
                        f"character", at(r, start_field))


def _check_keys(mv: memoryview, index: np.ndarray, keywords_at: int, source: str) -> None:
    """Every keyed layer's text hashes to its id (a row that lies about its key could otherwise be
    found by a key it does not hold): one hash per keyed layer, so with the content checks."""
    for row in np.flatnonzero(index["flags"] & np.uint32(FLAG_KEYED)).tolist():
        start = keywords_at + int(index["key_offset"][row])
        text = codecs.utf_8_decode(mv[start:start + int(index["key_length"][row])], "strict", True)[0]
        layer_id = int(index["layer_id"][row])
        if key_id(text) != layer_id:
            raise RegionFormatError(source=source, offset=start,
                                    fault=f"layer {layer_id} holds key {text!r}, whose id is {key_id(text)}")


def _check_content(mv: memoryview, index: np.ndarray, source: str) -> None:
    """Every layer's CRC32, and UTF-8 of every text layer: a loop per layer, C speed per byte."""
    columns = (index[f].tolist() for f in ("layer_id", "offset", "length", "crc32", "flags"))
    for layer_id, start, length, expected, flags in zip(*columns):
        content: bytes | memoryview = mv[start:start + length]
        if flags & FLAG_ZSTD:
            content = inflate(content, source=source, layer_id=layer_id, offset=start)
        actual = zlib.crc32(content)
        if actual != expected:
            raise RegionFormatError(source=source, offset=start,
                                    fault=f"layer {layer_id} content checksum mismatch: crc32 is "
                                          f"{actual:#010x}, the index says {expected:#010x}")
        if flags & FLAG_TEXT:
            try:
                codecs.utf_8_decode(content, "strict", True)
            except UnicodeDecodeError as exc:
                raise RegionFormatError(source=source, offset=start + (0 if flags & FLAG_ZSTD else exc.start),
                                        fault=f"layer {layer_id} text is not valid UTF-8 ({exc.reason} at "
                                              f"content byte {exc.start})") from None


class Region:
    """One dimension's region: validated once, then read without copying. Not thread-affine.

    Build it with :meth:`from_buffer` (any buffer: bytes, mmap, a view into shared memory; the
    caller keeps owning it) or :meth:`open` (maps a file read-only; the Region owns the mapping and
    :meth:`close` releases it). Views it hands out must not outlive :meth:`close`.
    """

    __slots__ = ("source", "dimension_id", "name", "layer_count", "nbytes", "buffer", "_views",
                 "_keywords_at", "_table", "_finalizer", "__weakref__")
    source: str
    dimension_id: int
    name: str
    layer_count: int
    nbytes: int
    buffer: memoryview
    _views: _Views
    _keywords_at: int
    _table: tuple[memoryview, int] | None  # (table, slot mask), built on first lookup
    _finalizer: weakref.finalize[[_Views, str], Region] | None

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_buffer(cls, buffer: Any, *, source: str, verify_checksums: bool = True) -> "Region":
        """Validate ``buffer`` as a region and wrap it without copying.

        ``source`` names the buffer in errors. With ``verify_checksums`` every layer's CRC32 is
        checked and every text layer is checked to be UTF-8 (about 3 ms per 10 MB); the structure
        (header, meta CRC, index, bounds, keywords) is always checked. Raises RegionFormatError and
        nothing else for malformed bytes.
        """
        try:
            view = byte_view(buffer)
        except (TypeError, ValueError) as exc:
            raise RegionFormatError(source=source, fault=f"not a contiguous byte buffer ({exc})") from None
        return cls._validated(view.toreadonly(), source, verify_checksums, None)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | os.PathLike[bytes], *, verify_checksums: bool = True) -> "Region":
        """Map the region file at ``path`` read-only, validate it, and own the mapping.

        Raises RegionFormatError for an unreadable, empty, non-regular or malformed file (the
        reason names the OS error or the fault). Region files must be replaced (``os.replace``,
        as :meth:`RegionBuilder.write` does), never rewritten in place while mapped.
        """
        source = os.fspath(path)
        source = source.decode(errors="replace") if isinstance(source, bytes) else source
        try:
            # O_NONBLOCK: opening a FIFO must not hang; it does nothing for regular files.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise RegionFormatError(source=source, fault=f"cannot open: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise RegionFormatError(source=source, fault=f"cannot map: {kind}")
            if st.st_size == 0:
                raise RegionFormatError(source=source, fault="empty file", offset=0)
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise RegionFormatError(source=source, fault=f"cannot map: {exc.strerror or exc}") from None
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        view = memoryview(mapping)
        try:
            region = cls._validated(view, source, verify_checksums, mapping)
        except BaseException as exc:
            if isinstance(exc, RegionFormatError):
                # The failed validation's frames hold views of the mapping; drop them so it can close.
                exc.__traceback__ = exc.__context__ = exc.__cause__ = None
            _release(_Views(None, view, mapping), source)
            raise
        return region

    @classmethod
    def _validated(cls, mv: memoryview, source: str, verify: bool, mapping: mmap.mmap | None) -> "Region":
        parsed = _check_region(mv, source, verify)
        self = cls.__new__(cls)
        self.source = source
        self.dimension_id = parsed.header.dimension_id
        self.name = parsed.name
        self.layer_count = parsed.header.layer_count
        self.nbytes = len(mv)
        self.buffer = mv
        index = parsed.rows
        self._keywords_at = parsed.keywords_at
        self._table = None
        self._views = _Views(index, mv, mapping)
        # Last line of defence for an owned mapping; close() runs it early (and only once).
        self._finalizer = weakref.finalize(self, _release, self._views, source) if mapping is not None else None
        return self

    def _find(self, layer_id: Any) -> int:
        """The row of ``layer_id`` (an id, or a str key / LayerKey whose text the row must hold),
        or -1: the same table and probe as a published generation's (shmpool.data.layer_index),
        built on the heap on first use."""
        if type(layer_id) is str:
            layer_id = LayerKey(layer_id)
        if self._table is None:
            index = self.index
            ids = index["layer_id"].astype(np.int64)  # < 2**63: checked by _check_index
            start = index["offset"].astype(np.int64)
            rows = np.arange(len(index), dtype=np.int64)
            built, _ = layer_index.build_table(ids, start, start + index["length"].astype(np.int64), rows)
            self._table = (built.data.cast("B").cast("q"), len(built) - 1)  # .data: memoryview(built)
        table, mask = self._table
        j = layer_index.probe(table, mask, layer_id)
        if j < 0:
            return -1
        row: int = table[j + layer_index.SLOT_META]
        if type(layer_id) is LayerKey and self._key_bytes(row) != layer_id.utf8:
            return -1  # the hash matched, the text does not: another key's layer
        return row

    def _key_bytes(self, row: int) -> bytes | None:
        if not self.index["flags"][row] & FLAG_KEYED:
            return None
        start = self._keywords_at + int(self.index["key_offset"][row])
        return bytes(self.buffer[start:start + int(self.index["key_length"][row])])

    def key(self, row: int) -> str | None:
        """The str key of the layer in ``row``, or None if it was added by an int id."""
        raw = self._key_bytes(row)
        return None if raw is None else raw.decode("utf-8")

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release the index, the buffer view and (for :meth:`open`) the file mapping. Idempotent.

        Views handed out earlier must not be used afterwards; if some are still referenced the
        unmapping waits for them (logged at debug), it never leaves them dangling.
        """
        if self._finalizer is not None:
            self._finalizer()
        elif self._views.view is not None:
            _release(self._views, self.source)
        self._views.view = None

    @property
    def closed(self) -> bool:
        return self._views.view is None

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- lookups

    @property
    def index(self) -> np.ndarray:
        """The layer index as a read-only INDEX_DTYPE array over the region (no copy)."""
        if self._views.index is None:
            raise self._closed_error()
        return self._views.index

    def layer(self, layer_id: int | str) -> memoryview:
        """The content of ``layer_id`` as stored: a read-only zero-copy slice. Raises LayerNotFound."""
        row = self._find(layer_id)
        if row < 0:
            raise self._not_found(layer_id)
        start = int(self.index["offset"][row])
        try:
            return self.buffer[start:start + int(self.index["length"][row])]
        except (TypeError, ValueError):  # the view was released by close()
            raise self._closed_error() from None

    def content(self, layer_id: int | str) -> bytes | memoryview:
        """The layer's content: the zero-copy slice, or for a compressed layer its decompressed copy."""
        if isinstance(layer_id, str):
            layer_id = LayerKey(layer_id)
        view = self.layer(layer_id)
        row = self._find(layer_id)
        if self.index["flags"][row] & FLAG_ZSTD:
            return inflate(view, source=self.source, layer_id=layer_id, offset=int(self.index["offset"][row]))
        return view

    def row(self, layer_id: int | str) -> int:
        """The row of ``layer_id`` in :attr:`index`. Raises LayerNotFound."""
        row = self._find(layer_id)
        if row < 0:
            raise self._not_found(layer_id)
        return row

    def layer_ids(self) -> list[int]:
        """All layer ids, ascending."""
        ids: list[int] = self.index["layer_id"].tolist()
        return ids

    @property
    def keywords_offset(self) -> int:
        """Absolute offset of the keyword blob (kw_offset in the index counts from here)."""
        return self._keywords_at

    def keyword_span(self, row: int) -> tuple[int, int]:
        """Absolute [start, end) of the keyword bytes of the layer in ``row``."""
        start = self._keywords_at + int(self.index["kw_offset"][row])
        return start, start + int(self.index["kw_length"][row])

    def keywords(self, row: int) -> tuple[str, ...]:
        """Keywords of the layer in ``row`` (decoded on every call; callers cache)."""
        start, end = self.keyword_span(row)
        if start == end:
            return ()
        try:
            return split_keywords(self.buffer[start:end])
        except (TypeError, ValueError):
            raise self._closed_error() from None

    def is_text(self, row: int) -> bool:
        """Whether the layer in ``row`` is UTF-8 text (as opposed to binary)."""
        return bool(self.index["flags"][row] & FLAG_TEXT)

    def frequency(self, row: int) -> float:
        return float(self.index["frequency"][row])

    def verify_checksums(self) -> None:
        """Check every layer's CRC32 and every text layer's UTF-8 now. Raises RegionFormatError."""
        _check_keys(self.buffer, self.index, self._keywords_at, self.source)
        _check_content(self.buffer, self.index, self.source)

    def __contains__(self, layer_id: object) -> bool:
        return self._find(layer_id) >= 0

    def __len__(self) -> int:
        return self.layer_count

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.layer_count} layers, {self.nbytes} bytes"
        return f"<Region {self.source!r}: dimension {self.dimension_id} {self.name!r}, {state}>"

    def _not_found(self, layer_id: Any) -> LayerNotFound:
        return LayerNotFound(dimension_id=self.dimension_id, layer_id=layer_id,
                             layer_count=self.layer_count, sample_ids=self.index["layer_id"][:12].tolist())

    def _closed_error(self) -> ShmPoolError:
        return RegionClosed(source=self.source)
