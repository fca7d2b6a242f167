# cython: language_level=3, auto_pickle=False
"""The read path in C: the probe of a generation's shared layer index, the slot decode, the
publish-sequence check of a batch, and the objects a lookup returns.

What is here runs once per lookup or per batch step (STYLE.md, "The compiled core"); what runs
once per publication (pinning and mapping a new generation, waiting for a reload, taking a
snapshot) stays in Python, in shmpool/data/mapping.py, reader.py and snapshot.py, and is called
from here only when a lookup finds the published generation moved or a dimension not yet mapped.

* :class:`Generation`: one mapped generation of one dimension, and the only object it costs. It
  holds a buffer export of each mapping it reads (the index's, each pool's) and the raw addresses
  of its table, rows and pools, taken from those buffers once, and its pin: while it lives, its
  pin holds; its deallocation releases the pin words' hold (shmpool/data/mapping.py).
* :class:`LoadedContext`: what a lookup returns. Its ``content`` is a read-only memoryview into
  the pool, made on first access; frequency, keywords, flags and CRC are decoded from the row
  when asked. A context made by a lookup is the object and nothing else: no view, no string.
* :class:`ContextCollection`: what ``load_contexts`` returns. A lazy one holds the batch's
  generations and one packed word per step (row << 16 | generation); contexts are made on
  access, and ``format_for_llm``, ``total_bytes`` and ``len`` read the rows directly.
* :class:`ReaderCore` and :class:`SnapshotCore`: the lookup methods of shmpool.data.reader.Reader
  and shmpool.data.snapshot.Snapshot, which subclass them; :class:`DimView` and
  :class:`DimTable`: a reader's dimensions, as its mapping keeps them.

The lookup takes no lock, makes no system call and logs nothing: the dimension's view (an index
for ids below 256, a dict beyond), one load of W.PIN_EPOCH (moved: honour it, in Python), the
reader's cache word for the dimension marked BUSY (a plain store; none when USERS is set already),
one load of its GENERATION word (and of TOUCHED, stored once per coordinator sampling period), the
probe, one bounds check, the context object, the cache word stored back with USERS set.

**The cache word** (``Control.caches``: one per reader and directory entry, layout 11: generation << 2 |
USERS << 1 | BUSY) lets the coordinator reclaim a superseded generation an idle reader merely keeps
mapped, without the reader running: the cached generation pins only while BUSY (a lookup is
between its GENERATION re-check and its end) or USERS (objects other than the cache refer to it)
is set. The word has one writer, this process (the coordinator only reads it), and every write is
made under the GIL by a section that runs no Python code, so the threads of this process never
interleave inside one. The orders (shm_sync.h):

* a lookup sets BUSY, then loads GENERATION; the coordinator stores GENERATION, and >= GRACE
  later makes every registered reader execute a memory barrier (membarrier(2),
  MEMBARRIER_CMD_GLOBAL_EXPEDITED: shm_sync.h) and loads the cache words (shmpool/data/pins.py,
  ``pinned_rows``). Either the coordinator sees BUSY (or the USERS the lookup leaves), or the
  lookup sees the new generation and never touches the old one (Dekker's pattern: neither
  side's load passes its own store). The lookup's half of the barrier is a compiler barrier
  (its store and load: release, acquire); a process the kernel did not register uses a
  sequentially consistent store and load instead (an xchg on x86-64, ~20 ns more a lookup);
* a lookup that finds USERS set already stores nothing: the word has pinned the generation
  without a break since the lookup that set USERS (itself announced as above), and only this
  process clears it, under the GIL, which this lookup holds;
* USERS is set by the release store that ends a lookup which made an object over the generation,
  and cleared (release) only by :func:`_holder_gone`, when the reference count of the Generation
  says the cache is its only holder: every object that can read a generation's bytes (context,
  ``content`` view, numpy array over it, batch, scan) holds the Generation, so nothing in this
  process can read its memory afterwards without a new lookup, which re-checks GENERATION;
* a generation leaves the word (a newer one, a drop, ``close``) only after anything still holding it
  was stored in the exact pin words (shmpool/data/mapping.py, ``_move_to_pins``); the coordinator
  reads the cache word before the pin words, so it never sees the generation in neither.

A death at any instant leaves at most BUSY or USERS set in a dead process's row, which the
coordinator's sweep drops with its pins; a reader stopped (SIGSTOP) inside a lookup keeps BUSY set,
and so the generation it may be reading, until it runs again. The GIL is held from the
first shared load to the return, so no other thread of this process can close the reader (and
unmap the control segment) in between; every return from Python code (a refresh, a first use)
re-reads the segment's address through its memoryview, which says when it was released.

The core imports only shmpool.errors; the Python collaborators (id checks, NavigationPath,
MissingStep, zstd inflation) are handed over once by shmpool.data.context through :func:`bind`.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.dict cimport PyDict_GetItemWithError
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp, memcpy

from ._index_layout cimport *
from ._sync cimport (asymmetric_fences, fault, fault_armed, shm_compiler_fence, shm_load, shm_load_sc,
                    shm_store, shm_store_sc)

import operator
import os
import sys
import zlib

from ..errors import DimensionNotFound, InvalidArgument, LayerNotFound, NotPicklable, OutOfBounds, RegionFormatError

cdef enum:
    SMALL_IDS = 256  # dimension ids a reader finds by index rather than by hash
    BATCH_ENTERED = 16  # dimensions one batch keeps BUSY at once (more: it ends and re-enters them)

# The cache word (shmpool.substrate.layout.CacheBit, CACHE_SHIFT): generation << 2 | USERS | BUSY.
cdef enum:
    CACHE_BUSY = 1
    CACHE_USERS = 2
    CACHE_SHIFT = 2

cdef extern from "Python.h":
    ctypedef struct PyMemoryViewObject:
        int flags
        Py_buffer view
    int _Py_MEMORYVIEW_RELEASED
    PyObject *_list_item "PyList_GET_ITEM" (PyObject *lst, Py_ssize_t i)  # borrowed, from a borrowed list
    Py_ssize_t _list_size "PyList_GET_SIZE" (PyObject *lst)
    Py_ssize_t _refcnt "Py_REFCNT" (PyObject *o)
    void Py_SET_REFCNT(PyObject *o, Py_ssize_t n)
    object PyMemoryView_FromObject(object obj)
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ

__all__ = ["Generation", "LoadedContext", "ContextCollection", "DimView", "DimTable", "ReaderCore",
           "SnapshotCore", "PrebuiltSlice", "NOT_MAPPED", "LAYOUT", "CACHE", "bind", "probe", "key_hash"]

# The layout constants of _index_layout.pxd, for tests/test_lookup_layout.py to compare.
LAYOUT = {
    "HEADER_BYTES": HEADER_BYTES, "SLOT_WORDS": SLOT_WORDS, "SLOT_KEY": SLOT_KEY, "SLOT_START": SLOT_START,
    "SLOT_END": SLOT_END, "SLOT_META": SLOT_META, "EMPTY": EMPTY, "POOL_BITS": POOL_BITS, "POOL_MASK": POOL_MASK,
    "ROW_BYTES": ROW_BYTES, "ROW_LAYER_ID": ROW_LAYER_ID, "ROW_START": ROW_START, "ROW_END": ROW_END,
    "ROW_KW_START": ROW_KW_START, "ROW_KW_END": ROW_KW_END, "ROW_FREQUENCY": ROW_FREQUENCY,
    "ROW_POOL": ROW_POOL, "ROW_FLAGS": ROW_FLAGS, "ROW_CRC32": ROW_CRC32, "ROW_KEY_START": ROW_KEY_START,
    "ROW_KEY_END": ROW_KEY_END, "FLAG_TEXT": FLAG_TEXT, "FLAG_ZSTD": FLAG_ZSTD, "FLAG_KEYED": FLAG_KEYED,
    "KEYWORD_SEPARATOR": chr(KEYWORD_SEPARATOR),
}
# The cache word's bits, for tests/test_lookup_layout.py to compare with shmpool.substrate.layout.
CACHE = {"BUSY": CACHE_BUSY, "USERS": CACHE_USERS, "SHIFT": CACHE_SHIFT}

# Whether this process is registered for the coordinator's membarrier (shm_sync.h): then a
# lookup's BUSY store and GENERATION load need only a compiler barrier between them.
cdef bint _asym = asymmetric_fences()
cdef object _is_finalizing = sys.is_finalizing  # a Generation released at exit leaves its pin words alone
cdef int64_t _pid = os.getpid()  # a Generation cached by another process (a forked parent) is not ours to write


def _asym_after_fork():
    global _asym, _pid
    _asym = asymmetric_fences()  # _sync's hook, registered first, has registered the child
    _pid = os.getpid()


os.register_at_fork(after_in_child=_asym_after_fork)

# ----------------------------------------------------------------- Python collaborators

cdef object _as_id = None           # shmpool.substrate.ids.as_id
cdef object _NavigationPath = None  # shmpool.data.context.NavigationPath
cdef object _MissingStep = None     # shmpool.data.context.MissingStep
cdef object _inflate = None         # shmpool.data.compression.inflate
cdef object _arrays = None          # shmpool.data.arrays (array layers: decoded on request, off the hot path)
cdef type _LayerKey = None          # shmpool.substrate.ids.LayerKey: a str key as its id, with its text
cdef object _ids = None             # shmpool.substrate.ids: its _key_hash is the hook tests swap
cdef tuple _BATCH_MISSES = (DimensionNotFound, LayerNotFound)


def bind(*, as_id, navigation_path, missing_step, inflate, arrays, layer_key, ids):
    """Hand the core its Python collaborators (called once, by shmpool.data.context)."""
    global _as_id, _NavigationPath, _MissingStep, _inflate, _arrays, _LayerKey, _ids
    _as_id, _NavigationPath, _MissingStep, _inflate, _arrays = as_id, navigation_path, missing_step, inflate, arrays
    _LayerKey, _ids = layer_key, ids


# ----------------------------------------------------------------- str keys

cdef extern from "key_hash.h":
    uint64_t shm_key_hash(const char *data, size_t n) noexcept

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL


def key_hash(bytes utf8):
    """The key id of a key's UTF-8 bytes: shmpool.substrate.ids's one key hash (key_hash.h)."""
    return shm_key_hash(utf8, len(utf8))


cdef inline bint _native_keys() except -1:
    # A lookup by str hashes the key here unless a test swapped the process's key hash
    # (tests/_key_collide.py): then every key goes through ids.LayerKey, made with the swapped one.
    return _ids._key_hash is key_hash


cdef tuple _steps_of(object path):
    """The checked (dimension, layer) pairs of ``path``, as NavigationPath makes them.

    In C for the common shape, a list or tuple of (int, int) tuples (a Dask task's path arrives
    as a list; NavigationPath's Python loop cost 10 us of a 20-step task in a busy worker,
    bench_dask): those pairs are immutable and already what NavigationPath would store, so they
    are kept as they are. Anything else goes through NavigationPath, which checks and converts
    (numpy integers) or raises InvalidId / InvalidArgumentType.
    """
    if type(path) is _NavigationPath:
        return path._steps
    cdef Py_ssize_t pos, n
    cdef object seq
    if type(path) is list or type(path) is tuple:
        seq = path
        n = len(seq)
        for pos in range(n):
            step = seq[pos]
            if (type(step) is not tuple or PyTuple_GET_SIZE(step) != 2
                    or type(<object>PyTuple_GET_ITEM(step, 0)) is not int
                    or type(<object>PyTuple_GET_ITEM(step, 1)) is not int):
                return _NavigationPath(path)._steps
        return path if type(path) is tuple else tuple(path)
    return _NavigationPath(path)._steps


# ----------------------------------------------------------------- buffers and the probe

cdef int _address(object obj, const char **base, Py_ssize_t *length) except -1:
    """The address and length of ``obj``'s buffer. The caller keeps ``obj`` (which keeps the
    mapping) alive for as long as it uses the address."""
    cdef Py_buffer buf
    PyObject_GetBuffer(obj, &buf, PyBUF_SIMPLE)
    base[0] = <const char *>buf.buf
    length[0] = buf.len
    PyBuffer_Release(&buf)
    return 0


cdef inline int64_t *_words_of(PyObject *mv) noexcept:
    """The address of a memoryview of shared words, or NULL once it was released (the instance
    was closed: its mapping may be gone). Borrowed: the caller holds ``mv`` (an attribute of an
    object it holds), so the lookup path takes no reference to pass it."""
    cdef PyMemoryViewObject *m = <PyMemoryViewObject *>mv
    if m.flags & _Py_MEMORYVIEW_RELEASED:
        return NULL
    return <int64_t *>m.view.buf


cdef inline int64_t _probe(const int64_t *table, int64_t mask, int64_t key, int64_t longest) noexcept nogil:
    """The word index of ``key``'s slot, or -1. Linear probing from ``key & mask`` over at most
    ``longest + 1`` slots: the index's max_probe, the farthest any present key lies from its
    home, so a miss ends there even in a full run of slots (one probe in a table of dense ids);
    an empty slot ends it sooner. ``longest`` <= mask: at most one pass over the table."""
    cdef int64_t j = key & mask
    cdef int64_t k, n = 0
    if key < 0:
        return -1
    while n <= longest:
        k = table[j * SLOT_WORDS + SLOT_KEY]
        if k == key:
            return j * SLOT_WORDS
        if k == EMPTY:
            return -1
        j = (j + 1) & mask
        n += 1
    return -1


cdef bint _key_holds(Generation gen, int64_t meta, object key) except -1:
    """Whether the slot found for a lookup by ``key`` (a LayerKey: the probe matched its id)
    holds that very key (:func:`_text_holds` with ``key.utf8``)."""
    cdef bytes text = key.utf8
    return _text_holds(gen, meta, text, len(text))


cdef bint _text_holds(Generation gen, int64_t meta, const char *text, Py_ssize_t n) except -1:
    """Whether the slot found for a lookup by key text ``text[0 .. n)`` (the probe matched its
    id) holds that very key: its row is FLAG_KEYED and its stored text equals it. One length
    test and a memcmp; the hash only found the slot, the text decides (an absent key whose id
    collides with a present one's must miss, not return the other layer)."""
    cdef Py_ssize_t row = ((~meta) if meta < 0 else meta) >> POOL_BITS
    gen._slot_row(row)
    if not gen._u16(row, ROW_FLAGS) & FLAG_KEYED:
        return False
    cdef int64_t start = gen._i64(row, ROW_KEY_START), end = gen._i64(row, ROW_KEY_END)
    if end - start != n:
        return False
    if end == start:
        return True  # the empty key: no bytes to compare (nor a pool to find them in)
    cdef const char *stored = gen._bytes(gen._u16(row, ROW_POOL), start, end)  # bounds-checked
    return memcmp(stored, text, n) == 0


cdef extern from "lookup_ids.h":
    # A Python int (exact: the callers check) as a table key; -1 when it does not fit an int64.
    int64_t _key_of "shm_key_of" (object layer_id) noexcept


def probe(table, int64_t mask, key, int64_t longest=-1):
    """The word index of ``key``'s slot in ``table`` (any buffer of int64 words, ``mask + 1``
    slots), or -1 if absent; -1 for anything but an int (bools included) or a numpy integer.
    ``longest``: the table's max_probe (-1: none known, the whole table)."""
    cdef const char *base
    cdef Py_ssize_t length
    if type(key) is not int:
        if isinstance(key, bool) or not hasattr(key, "__index__"):
            return -1
        key = key.__index__()
    if mask < 0 or (mask & (mask + 1)):
        raise InvalidArgument(argument="mask", value=mask, reason="is not a power of two minus one")
    _address(table, &base, &length)
    if mask >= length // (SLOT_WORDS * 8):  # (mask + 1) slots do not fit; no product to overflow
        raise InvalidArgument(argument="table", value=length,
                              reason=f"holds {length} bytes, fewer than {mask + 1} slots need")
    if not -1 <= longest <= mask:
        raise InvalidArgument(argument="longest", value=longest, reason=f"is not a probe length of {mask + 1} slots")
    return _probe(<const int64_t *>base, mask, _key_of(key), mask if longest < 0 else longest)


# ----------------------------------------------------------------- a mapped generation

cdef class DimView


cdef int64_t _NO_SLOTS[SLOT_WORDS]
_NO_SLOTS[SLOT_KEY], _NO_SLOTS[SLOT_START], _NO_SLOTS[SLOT_END], _NO_SLOTS[SLOT_META] = EMPTY, 0, 0, EMPTY


@cython.final
@cython.no_gc_clear  # __dealloc__ needs _pins: a cycle through a DimView must not clear it first
cdef class Generation:
    """One mapped generation of one dimension: its shared layer index and the pools its layers
    live in, as one object: O(1) whatever the layer count, and the only object a mapped
    generation costs (plus its name, decoded on first use).

    ``Generation(dimension_id, generation, index, index_offset, index_nbytes, header, pools,
    entry=-1, pins=None, held=False)``: the index is ``index_nbytes`` bytes at ``index_offset``
    of buffer ``index`` (a segment's mmap; or the instance's one read-only memoryview of it,
    which every generation indexed in that segment then holds by reference, its export keeping
    the mapping, instead of taking an export of its own: 80 B less each, docs/performance.md
    issue 22; nobody may ``release()`` such a view), ``header`` its checked
    :class:`shmpool.data.layer_index.Header`, ``pools`` a sequence (pool number -> buffer of the
    whole pool segment or mapped file, or None where no layer lives). The generation holds a
    buffer export of each (so none of those mappings can be unmapped under it) and takes the
    raw addresses of its table, rows and pools once.

    The pin: while ``held``, the pin words of ``pins`` (a shmpool.data.pins.RowPins) hold
    (``entry``, ``generation``) for this object, and its deallocation releases them (what the
    mapping's arrays' finalizer did, without a Python object of its own). ``held`` is True from
    the start for a snapshot's, and set when the reader's cache lets go of it while something
    still holds it (shmpool/data/mapping.py ``_move_to_pins``)."""

    cdef readonly object dimension_id
    cdef int64_t dim            # dimension_id as a C integer: what a context stores
    cdef readonly int64_t generation
    cdef str _name              # decoded from the index on first use
    cdef readonly Py_ssize_t layer_count
    cdef readonly int64_t mask
    cdef readonly int64_t max_probe  # the index's: no present key lies farther from its home slot
    cdef DimView _dv            # the reader's view caching this generation (its cache word), else None
    cdef int64_t _dv_pid        # the process that cached it: a forked child never writes its parent's row
    cdef const int64_t *_table
    cdef const char *_rows
    cdef const char *_index
    cdef Py_ssize_t _name_length
    cdef Py_ssize_t pool_lo, npools  # pool numbers [pool_lo, npools) have entries below
    cdef const char **pool_base     # indexed by pool number (the block holds entries from pool_lo on)
    cdef Py_ssize_t *pool_len
    cdef char *_block               # what was allocated: the two arrays' entries, then _bufs
    cdef Py_buffer *_bufs       # the exports held: the index's mapping (unless shared), then each distinct pool's
    cdef Py_ssize_t _nbufs
    cdef object _index_view     # the shared read-only memoryview the index lies in, when given one (else None)
    cdef readonly Py_ssize_t entry
    cdef public bint held       # the pin words hold (entry, generation) for this object
    cdef object _pins           # their owner: pins.release(entry, generation) when this object goes

    def __cinit__(self):
        self._table = _NO_SLOTS
        self._rows = NULL
        self._index = NULL
        self.pool_lo = 0
        self.npools = 0
        self.pool_base = NULL
        self.pool_len = NULL
        self._block = NULL
        self._bufs = NULL
        self._nbufs = 0
        self.generation = -1
        self.entry = -1
        self.held = False
        self._name = ""

    def __init__(self, dimension_id, int64_t generation, index, Py_ssize_t index_offset, Py_ssize_t index_nbytes,
                 header, pools, Py_ssize_t entry=-1, pins=None, bint held=False):
        cdef bint shared = type(index) is memoryview
        cdef Py_ssize_t p, k, n = len(pools), held_max = 0 if shared else 1, lo = -1, span
        cdef int64_t table_at, rows_at, slots, count, nbytes, longest, name_length
        cdef int64_t name_at = HEADER_BYTES
        cdef char *block
        cdef Py_buffer *buf
        cdef Py_buffer *whole
        if self._bufs != NULL:
            raise InvalidArgument(argument="generation", value=generation, reason="is initialised already")
        self.entry = entry
        self._pins = pins
        self.held = held  # from here on the pin is ours: released by __dealloc__, also if this raises
        fields = (header.table_offset, header.rows_offset, header.slots, header.layer_count, header.nbytes,
                  header.max_probe, header.name_length)
        if not all(0 <= f < 2**62 for f in fields):  # sizes of a mapping: nothing near int64's edge
            raise RegionFormatError(source=f"dimension {dimension_id} generation {generation}",
                                    fault=f"layer index header fields {fields} out of range")
        table_at, rows_at, slots, count, nbytes, longest, name_length = fields
        for p in range(n):
            if pools[p] is not None:
                held_max += 1
                if lo < 0:
                    lo = p
        lo = max(lo, 0)
        span = max(1, n - lo)
        # One block: the pools' addresses and lengths from the first pool used on (a region file's
        # pool number is 9 or more: entries below it would be ~16 B each of nothing per
        # generation), then room for a buffer per mapping (the index's and each pool's, fewer if
        # shared). The arrays are indexed by pool number, so their pointers start ``lo`` entries
        # before the block: integer arithmetic, and only numbers the bounds check admits
        # (``pool_lo <= pool < npools``) are ever used.
        block = <char *>PyMem_Malloc(span * (sizeof(char *) + sizeof(Py_ssize_t)) + held_max * sizeof(Py_buffer))
        if block is NULL:
            raise MemoryError()
        self._block = block
        self.pool_base = <const char **>(<uintptr_t>block - lo * sizeof(char *))
        self.pool_len = <Py_ssize_t *>(<uintptr_t>(block + span * sizeof(char *)) - lo * sizeof(Py_ssize_t))
        self._bufs = <Py_buffer *>(block + span * (sizeof(char *) + sizeof(Py_ssize_t)))
        if shared:
            # Held by reference: the view's own export keeps the mapping while this object lives.
            if (<PyMemoryViewObject *>index).flags & _Py_MEMORYVIEW_RELEASED or not index.c_contiguous:
                raise InvalidArgument(argument="index", value=index, reason="is a released or non-contiguous view")
            self._index_view = index
            whole = &(<PyMemoryViewObject *>index).view
        else:
            PyObject_GetBuffer(index, &self._bufs[0], PyBUF_SIMPLE)
            self._nbufs = 1
            whole = &self._bufs[0]
        source = f"dimension {dimension_id} generation {generation}"
        if index_offset < 0 or index_nbytes < 0 or index_offset > whole.len or index_nbytes > whole.len - index_offset:
            raise RegionFormatError(source=source, fault=f"layer index [{index_offset}, {index_offset + index_nbytes}) "
                                                         f"lies outside its {whole.len}-byte mapping")
        # layer_index.read_header checked all of this against the index; checked again here
        # because the addresses below are trusted from now on.
        # Sizes bounded by the mapping before any product or sum of them: a header's 64-bit
        # fields could otherwise overflow an int64 and pass the equalities below.
        if (slots < 8 or slots & (slots - 1) or slots <= count or longest >= slots  # every field >= 0 (above)
                or nbytes > index_nbytes or rows_at > index_nbytes or table_at > index_nbytes
                or name_length > index_nbytes
                or count > index_nbytes // ROW_BYTES or slots > index_nbytes // (SLOT_WORDS * 8)
                or table_at % 8 or rows_at % 8
                or rows_at < name_at + name_length or table_at != rows_at + count * ROW_BYTES
                or table_at + slots * SLOT_WORDS * 8 != nbytes):
            raise RegionFormatError(source=source, fault=f"layer index sections (rows at {rows_at}, table at "
                                                         f"{table_at}, {slots} slots) do not fit {index_nbytes} bytes")
        self._index = <const char *>whole.buf + index_offset
        self.dimension_id = dimension_id
        self.dim = dimension_id
        self.generation = generation
        self._name = None
        self._name_length = name_length
        self.layer_count = count
        self.mask = slots - 1
        self.max_probe = longest
        self._table = <const int64_t *>(self._index + table_at)
        self._rows = self._index + rows_at
        for p in range(lo, lo + span):
            self.pool_base[p] = NULL
            self.pool_len[p] = 0
        self.pool_lo = lo
        self.npools = n
        for p in range(lo, n):
            obj = pools[p]
            if obj is None:
                continue
            buf = NULL
            for k in range(self._nbufs):  # the index's mapping, or a pool seen already: one export each
                if <PyObject *>self._bufs[k].obj == <PyObject *>obj:
                    buf = &self._bufs[k]
                    break
            if buf is NULL:
                if self._nbufs == held_max:  # ``pools`` changed under us (an exporter running Python)
                    raise InvalidArgument(argument="pools", value=n, reason="changed while being mapped")
                buf = &self._bufs[self._nbufs]
                PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE)
                self._nbufs += 1
            self.pool_base[p] = <const char *>buf.buf
            self.pool_len[p] = buf.len

    def __dealloc__(self):
        cdef Py_ssize_t k
        for k in range(self._nbufs):
            PyBuffer_Release(&self._bufs[k])
        PyMem_Free(self._block)  # pool_base, pool_len and _bufs are inside it
        if self.held and self._pins is not None and not _is_finalizing():
            # Not at exit: a dead process's row and pins are dropped by the coordinator anyway.
            self._pins.release(self.entry, self.generation)

    @property
    def name(self):
        """The dimension's name, as the index records it."""
        if self._name is None:
            self._name = self._utf8(self._index + HEADER_BYTES, self._name_length, "the dimension's name")
        return self._name

    cdef str _utf8(self, const char *at, Py_ssize_t n, str what):
        """Text the coordinator verified as UTF-8 when it published it (a name, keywords, a text
        layer): no longer UTF-8 means the shared memory is corrupt, said as RegionFormatError."""
        try:
            return PyUnicode_DecodeUTF8(at, n, "strict")
        except UnicodeDecodeError as exc:
            raise RegionFormatError(source=self.source, fault=f"{what} is not UTF-8 any more ({exc.reason} at byte "
                                                              f"{exc.start})") from None

    @property
    def source(self):
        return f"dimension {self.dimension_id} generation {self.generation}"

    @property
    def table(self):
        """A copy of the table section, as a memoryview of int64 words (``mask + 1`` slots of
        SLOT_WORDS): for inspection and tests, not the lookup path. A copy, because a view would
        read the generation's memory without holding the Generation (see the cache word)."""
        if self._index == NULL:
            return memoryview(b"").cast("q")
        return memoryview(PyBytes_FromStringAndSize(<const char *>self._table, (self.mask + 1) * SLOT_WORDS * 8)).cast("q")

    @property
    def rows(self):
        """A copy of the rows section (``layer_count`` rows of ROW_BYTES, layer_index.ROW_DTYPE):
        for inspection and tests, not the lookup path."""
        if self._index == NULL:
            return memoryview(b"")
        return memoryview(PyBytes_FromStringAndSize(self._rows, self.layer_count * ROW_BYTES))

    # -------------------------------------------------------------- rows

    cdef inline const char *_row(self, Py_ssize_t row) noexcept:
        return self._rows + row * ROW_BYTES

    cdef int64_t _i64(self, Py_ssize_t row, int field) noexcept:
        cdef int64_t v
        memcpy(&v, self._row(row) + field, 8)
        return v

    cdef int _u16(self, Py_ssize_t row, int field) noexcept:
        cdef uint16_t v
        memcpy(&v, self._row(row) + field, 2)
        return v

    cdef const char *_bytes(self, Py_ssize_t pool, int64_t start, int64_t end) except NULL:
        """The address of ``[start, end)`` in pool ``pool``; RegionFormatError if it lies outside."""
        if not self._in_pool(pool, start, end):
            raise RegionFormatError(source=self.source, fault=f"bytes [{start}, {end}) of pool {pool} lie outside "
                                                              "the pools this generation maps")
        return self.pool_base[pool] + start

    def frequency(self, Py_ssize_t row):
        cdef double v
        self._check_row(row)
        memcpy(&v, self._row(row) + ROW_FREQUENCY, 8)
        return v

    def keywords(self, Py_ssize_t row):
        self._check_row(row)
        cdef int64_t start = self._i64(row, ROW_KW_START), end = self._i64(row, ROW_KW_END)
        if end <= start:
            return ()
        cdef const char *at = self._bytes(self._u16(row, ROW_POOL), start, end)
        text = self._utf8(at, end - start, f"the keywords of row {row}")
        # Empty pieces (a stray separator) are dropped, as region.split_keywords does.
        return tuple([k for k in text.split(chr(KEYWORD_SEPARATOR)) if k])

    def is_text(self, Py_ssize_t row):
        self._check_row(row)
        return bool(self._u16(row, ROW_FLAGS) & FLAG_TEXT)

    def crc32(self, Py_ssize_t row):
        cdef uint32_t v
        self._check_row(row)
        memcpy(&v, self._row(row) + ROW_CRC32, 4)
        return v

    cdef int _check_row(self, Py_ssize_t row) except -1:
        if row < 0 or row >= self.layer_count:
            raise OutOfBounds(what=f"rows of {self.source}", offset=row, length=1, limit=self.layer_count)
        return 0

    cdef int _slot_row(self, int64_t row) except -1:
        """A row a table slot names (its META word): one of the index's rows, else the index is
        corrupt. Every row a lookup or a batch keeps comes through here (or :meth:`_check_row`):
        a batch reads its rows later, with no check of its own."""
        if <uint64_t>row >= <uint64_t>self.layer_count:
            raise RegionFormatError(source=self.source, fault=f"a table slot names row {row}, past the index's "
                                                              f"{self.layer_count} rows")
        return 0

    def layer_ids(self):
        """Every layer id, ascending (the rows' order)."""
        cdef Py_ssize_t row
        return [self._i64(row, ROW_LAYER_ID) for row in range(self.layer_count)]

    def rows_with_keyword(self, str keyword):
        """Rows tagged ``keyword``, decoded now: a per-reader map of every keyword would be
        O(layers) private memory per generation, the very cost the shared index removes."""
        cdef Py_ssize_t row
        return [row for row in range(self.layer_count)
                if self._i64(row, ROW_KW_END) > self._i64(row, ROW_KW_START) and keyword in self.keywords(row)]

    # -------------------------------------------------------------- lookups

    cdef object _missing(self, object layer_id):
        cdef Py_ssize_t row
        sample = [self._i64(row, ROW_LAYER_ID) for row in range(min(12, self.layer_count))]
        return LayerNotFound(dimension_id=self.dimension_id, layer_id=layer_id, generation=self.generation,
                             layer_count=self.layer_count, sample_ids=sample)

    cdef inline bint _in_pool(self, Py_ssize_t pool, int64_t start, int64_t end) noexcept:
        return (self.pool_lo <= pool < self.npools and self.pool_base[pool] != NULL and 0 <= start <= end
                and end <= self.pool_len[pool])

    cdef LoadedContext _context(self, object layer_id, bint absent_ok=False):
        """The layer as a context; LayerNotFound if this generation has no such layer (None
        with ``absent_ok``: ReaderCore.find's miss builds no exception)."""
        if type(layer_id) is str:
            return self._keyed(layer_id, absent_ok)
        cdef int64_t key = _key_of(layer_id)
        cdef int64_t j = _probe(self._table, self.mask, key, self.max_probe)
        if j < 0:
            return self._absent(layer_id, absent_ok)
        cdef int64_t meta = self._table[j + SLOT_META]
        # A lookup by key (never an int: one pointer compare on the id path) checks the text.
        if type(layer_id) is not int and type(layer_id) is _LayerKey and not _key_holds(self, meta, layer_id):
            return self._absent(layer_id, absent_ok)
        return self._slot_context(layer_id, key, j, meta)

    cdef inline LoadedContext _slot_context(self, object layer_id, int64_t key, int64_t j, int64_t meta):
        """The context of slot ``j`` (its META word ``meta``), found for ``key`` and checked:
        a compressed layer inflated (a context whose layer_id is ``layer_id``, or ``key`` made
        an int when None), else the one bounds check and the context over the pool."""
        if meta < 0:
            self._slot_row((~meta) >> POOL_BITS)
            return self._inflated(PyLong_FromLongLong(key) if layer_id is None else layer_id, (~meta) >> POOL_BITS)
        cdef int64_t start = self._table[j + SLOT_START], end = self._table[j + SLOT_END]
        cdef Py_ssize_t pool = meta & POOL_MASK
        if not self._in_pool(pool, start, end):  # the one bounds check
            self._bytes(pool, start, end)  # raises RegionFormatError naming them
        self._slot_row(meta >> POOL_BITS)
        return _context_of(self, key, meta >> POOL_BITS, pool, start, end)

    cdef LoadedContext _absent(self, object layer_id, bint absent_ok):
        if absent_ok:
            return None
        raise self._missing(layer_id)

    cdef LoadedContext _keyed(self, str key, bint absent_ok=False):
        """The layer of str ``key`` (ReaderCore's lookups by key): hashed here, from the UTF-8
        the str object caches, with no LayerKey made. A key with a lone surrogate has no UTF-8:
        the LayerKey path gives its id (no builder stores such a key: it is found nowhere)."""
        cdef Py_ssize_t n
        cdef const char *text
        try:
            text = PyUnicode_AsUTF8AndSize(key, &n)
        except UnicodeEncodeError:
            return self._context(_LayerKey(key), absent_ok)
        cdef int64_t kid = <int64_t>shm_key_hash(text, n)
        cdef int64_t j = _probe(self._table, self.mask, kid, self.max_probe)
        if j < 0:
            return self._absent(key, absent_ok)
        cdef int64_t meta = self._table[j + SLOT_META]
        if not _text_holds(self, meta, text, n):
            return self._absent(key, absent_ok)
        return self._slot_context(None, kid, j, meta)

    cdef LoadedContext _at(self, Py_ssize_t row):
        """The context of row ``row`` (a scan, a lazy batch's step)."""
        cdef int64_t start = self._i64(row, ROW_START), end = self._i64(row, ROW_END)
        cdef int pool = self._u16(row, ROW_POOL)
        if self._u16(row, ROW_FLAGS) & FLAG_ZSTD:
            return self._inflated(PyLong_FromLongLong(self._i64(row, ROW_LAYER_ID)), row)
        self._bytes(pool, start, end)
        return _context_of(self, self._i64(row, ROW_LAYER_ID), row, pool, start, end)

    cdef LoadedContext _inflated(self, object layer_id, Py_ssize_t row):
        """A compressed (cold) layer: the one lookup that returns a copy, decompressed here."""
        self._check_row(row)
        cdef int64_t start = self._i64(row, ROW_START), end = self._i64(row, ROW_END)
        cdef Py_ssize_t pool = self._u16(row, ROW_POOL)
        cdef const char *at = self._bytes(pool, start, end)
        # A bare view for the call only (it copies): no holder of this object, whose release
        # would take part in the cache word's USERS protocol in the middle of a lookup. It holds
        # no export of the mapping either, so it is released when the call returns: a reference
        # kept anywhere (a traceback) raises instead of reading memory that may be unmapped.
        view = PyMemoryView_FromMemory(<char *>at, end - start, PyBUF_READ)
        try:
            data = _inflate(view, source=self.source, layer_id=layer_id, offset=start)
        finally:
            view.release()
        return LoadedContext(self.dimension_id, layer_id, data, self, row)  # bytes: LoadedContext.content

    def lookup(self, layer_id):
        """The layer as a context (LayerNotFound if absent): the probe every lookup path uses."""
        if type(layer_id) is not int:
            layer_id = _as_id(layer_id, "layer_id")
        return self._context(layer_id)

    def context_at(self, Py_ssize_t row):
        self._check_row(row)
        return self._at(row)

    def contexts(self, rows):
        """Contexts of ``rows`` in the given order (scan)."""
        for row in rows:
            self._check_row(row)
            yield self._at(row)

    def __repr__(self):
        return f"<Generation {self.source}: {self.layer_count} layers>"


cdef Generation _not_mapped():
    # Stands in for a dropped generation: its number (-1) matches no published one, so the next
    # lookup refreshes, while the hot path keeps its single comparison.
    cdef Generation g = Generation.__new__(Generation)
    g.dimension_id = -1
    return g


NOT_MAPPED = _not_mapped()


@cython.final
cdef class DimView:
    """A reader's view of one dimension: its directory entry's word positions, its cache word
    (``cache_mv[cache_pos]``, the reader's cache word for the entry, shmpool.substrate.layout.cache_word; -1: none, the lookup
    path then always asks the mapping), and the generation it has mapped (NOT_MAPPED until the
    first lookup, and after a drop). The mapping (shmpool/data/mapping.py) changes ``current``
    only through :meth:`enter`, :meth:`install`, :meth:`leave` and :meth:`drop`."""

    cdef readonly object dimension_id
    cdef readonly Py_ssize_t entry, gen_pos, touch_pos, cache_pos
    cdef object _cache_mv
    cdef public Generation current
    cdef uint64_t _batch        # the batch (ReaderCore._batches) that entered the cache word last

    def __init__(self, dimension_id, Py_ssize_t entry, Py_ssize_t gen_pos, Py_ssize_t touch_pos,
                 cache_mv=None, Py_ssize_t cache_pos=-1):
        if cache_mv is not None:
            if type(cache_mv) is not memoryview or cache_mv.format != "q" or not 0 <= cache_pos < len(cache_mv):
                raise InvalidArgument(argument="cache_pos", value=cache_pos, reason="is not a word of a 'q' memoryview")
        self.dimension_id = dimension_id
        self.entry = entry
        self.gen_pos = gen_pos
        self.touch_pos = touch_pos
        self.cache_pos = cache_pos if cache_mv is not None else -1
        self._cache_mv = cache_mv
        self.current = NOT_MAPPED

    cdef inline int64_t *_cw(self) noexcept:
        """The cache word's address; NULL without one, or once the control segment was released."""
        cdef int64_t *base
        if self._cache_mv is None:
            return NULL
        base = _words_of(<PyObject *>self._cache_mv)
        return NULL if base == NULL else base + self.cache_pos

    @property
    def cache_word(self):
        """The cache word as it is now (0 without one): for tests and listings."""
        cdef int64_t *w = self._cw()
        return 0 if w == NULL else shm_load(w)

    def enter(self, int64_t generation, directory_mv):
        """Announce ``generation`` BUSY in the cache word, then return the GENERATION word (the
        mapping's pin-then-re-check, shmpool/data/mapping.py ``refresh``). The word must hold
        nothing (after :meth:`drop`); the caller holds the mapping's lock, so the lookup path of
        another thread finds BUSY and asks the mapping, which waits for that lock."""
        cdef int64_t *w = self._cw()
        cdef int64_t *directory = _words_of(<PyObject *>directory_mv)
        if w == NULL or directory == NULL or not 0 <= self.gen_pos < len(directory_mv):
            return -1
        shm_store_sc(w, generation << CACHE_SHIFT | CACHE_BUSY)  # SC: before the GENERATION load
        if fault_armed():
            fault("cache.entered")  # BUSY, GENERATION not re-checked: a dead row, swept
        return shm_load_sc(directory + self.gen_pos)

    def install(self, Generation gen not None):
        """After :meth:`enter` saw GENERATION == ``gen.generation`` and ``gen`` was mapped: make it
        the cached generation, idle, with no users."""
        cdef int64_t *w = self._cw()
        if w == NULL:
            raise InvalidArgument(argument="view", value=self.dimension_id, reason="has no cache word")
        gen._dv = self
        gen._dv_pid = _pid
        self.current = gen
        shm_store(w, gen.generation << CACHE_SHIFT)  # release: the mapping's reads of it came first

    def leave(self):
        """:meth:`enter` found another generation published, or mapping failed: nothing cached."""
        cdef int64_t *w = self._cw()
        if w != NULL:
            shm_store(w, 0)

    def drop(self, move, bint write=True):
        """Let go of the cached generation; False if none was mapped. If anything but the cache
        refers to it (a context, a view, a batch), ``move(gen)`` stores it in the pin words
        first, which keep it until the last of those goes; then the cache word is cleared
        (``write``: a forked child clears its own row's instead, shmpool/data/mapping.py)."""
        cdef Generation gen = self.current
        cdef int64_t *w
        if gen is NOT_MAPPED:
            return False
        if _refcnt(<PyObject *>gen) > 2:  # this local and ``current`` are the cache's own
            move(gen)
            if fault_armed():
                fault("cache.moved")  # in the pin words and in the cache word: a dead row, swept
        if gen._dv is self:
            gen._dv = None  # its holders' deallocs leave the word alone from now on
        self.current = NOT_MAPPED
        if write:
            w = self._cw()
            if w != NULL:
                shm_store(w, 0)  # release: after the pin words' stores
        return True

    def settle(self):
        """Clear USERS if the cache is the cached generation's only holder (after a lookup that
        went through Python: the objects it made keep USERS set while they live)."""
        _settle(self)


cdef inline void _settle(DimView dv) noexcept:
    cdef Generation gen = dv.current
    cdef int64_t *w
    cdef int64_t g = gen.generation
    if gen is None or g <= 0 or _refcnt(<PyObject *>gen) != 2:  # ``current`` and this local
        return
    w = dv._cw()
    if w != NULL and gen._dv is dv and gen._dv_pid == _pid and w[0] == (g << CACHE_SHIFT | CACHE_USERS):
        shm_store(w, g << CACHE_SHIFT)


cdef inline void _holder_gone(PyObject *g) noexcept:
    """A holder of Generation ``g`` (a context, a content view, a batch) is being deallocated,
    its reference still counted: if the cache is the only other one, clear USERS. Every context
    a caller drops runs this, so it reads through borrowed pointers (no reference taken)."""
    cdef PyObject *dv
    cdef int64_t *w
    cdef int64_t v
    if _refcnt(g) != 2:
        return
    dv = <PyObject *>(<Generation>g)._dv
    if (dv == <PyObject *>None or <PyObject *>(<DimView>dv).current != g
            or (<Generation>g)._dv_pid != _pid):
        return
    w = (<DimView>dv)._cw()
    if w == NULL:
        return
    v = (<Generation>g).generation << CACHE_SHIFT
    if w[0] == (v | CACHE_USERS):
        shm_store(w, v)  # release: every read of its bytes in this process came before



# What to send instead of an object that holds this process's mappings (NotPicklable).
_SEND_BYTES = "send bytes(ctx.content) and the ids, or the ids alone and look them up where they arrive"
_SEND_NAME = "send the instance's name and attach (or connect) again in the other process"

# ----------------------------------------------------------------- what a lookup returns

# Not tracked by the cycle collector: a context refers to ints, its memoryview and its generation,
# none of which can refer back to it, and an untracked object does not count towards the
# allocations that trigger a collection (one every 700 lookups otherwise: a tail-latency spike).
# No @cython.freelist: the type keeps its own spares (_context_of, _context_release below).
@cython.no_gc
@cython.final
cdef class LoadedContext:
    """One layer of one dimension, as loaded from shared memory (zero-copy).

    ``content`` is a read-only memoryview into the pool (made on first access and kept, and
    made again if the caller released it, ``with ctx.content as view:``); it keeps its
    generation pinned for as long as it lives, like the context itself. An inflated
    (compressed) layer keeps its bytes and gives a view of them per access. Frequency,
    keywords, text flag and CRC are read from the generation's row when asked.
    ``LoadedContext(dimension_id, layer_id, content, gen, row)`` makes one over bytes of your
    own, ``gen`` any object with ``generation``, ``name`` and ``frequency/keywords/is_text/crc32(row)``.
    """

    def __reduce__(self):
        raise NotPicklable(what="layer context", hint=_SEND_BYTES)

    cdef int64_t _dim, _layer  # the ids as C integers: two int objects fewer per lookup
    cdef object _content      # None until asked for (contexts of a Generation)
    cdef object _gen          # a Generation, or any object of its shape (shmpool.dask's copies)
    cdef Py_ssize_t _row
    cdef Py_ssize_t _pool     # -1: the bytes are _content's own (inflated, or given)
    cdef int64_t _start, _end

    def __init__(self, int64_t dimension_id, int64_t layer_id, content, gen, Py_ssize_t row):
        self._dim = dimension_id
        self._layer = layer_id
        self._content = content
        self._gen = gen
        self._row = row
        self._pool = -1
        self._start = 0
        self._end = len(content)

    @property
    def dimension_id(self):
        return self._dim

    @property
    def layer_id(self):
        return self._layer

    # No __dealloc__: _context_release is the type's tp_dealloc itself (installed below), which
    # spares every context's release Cython's exception save and restore around a __dealloc__
    # (~10 ns of a ~100 ns lookup-and-drop, measured).

    @property
    def content(self):
        """The layer's bytes: a read-only memoryview into shared memory (zero-copy)."""
        cdef _Bytes exporter
        cdef Generation gen
        cdef object view = self._content
        if type(view) is bytes and self._pool < 0 and type(self._gen) is Generation:
            # An inflated (compressed) layer keeps its bytes, not a view of them: a view of its
            # own per access, so that one the caller released (``with ctx.content as v:``) is
            # not the one the next caller gets.
            return memoryview(view)
        if type(view) is memoryview and (<PyMemoryViewObject *>view).flags & _Py_MEMORYVIEW_RELEASED:
            if not self._mapped():
                return view  # the caller's own view, released by the caller
            view = self._content = None  # released by the caller: a context over a pool makes another
        if view is None:
            if not self._mapped():
                raise _unmade(self)
            # A view whose exporter holds the Generation, so the view alone (the context gone)
            # still keeps the generation: as a holder, and, while cached, through USERS.
            gen = <Generation>self._gen
            exporter = _Bytes.__new__(_Bytes)
            exporter._gen = gen
            exporter._at = gen.pool_base[self._pool] + self._start
            exporter._len = self._end - self._start
            self._content = PyMemoryView_FromObject(exporter)
        return self._content

    cdef inline bint _mapped(self) noexcept:
        # A context over a pool of its Generation. Not one made by LoadedContext.__new__ alone:
        # its fields are zero (pool 0) and its _gen None, so the pool's address is nowhere.
        return self._pool >= 0 and type(self._gen) is Generation

    cdef inline object _meta(self):
        """What answers for its metadata: its generation, or the ``gen`` it was given."""
        if self._gen is None:
            raise _unmade(self)
        return self._gen

    @property
    def generation(self):
        if type(self._gen) is Generation:
            return (<Generation>self._gen).generation
        return self._meta().generation

    @property
    def dimension_name(self):
        return self._meta().name

    @property
    def frequency(self):
        return self._meta().frequency(self._row)

    @property
    def keywords(self):
        return self._meta().keywords(self._row)

    @property
    def is_text(self):
        return self._meta().is_text(self._row)

    @property
    def crc32(self):
        """The layer's CRC32 as recorded when it was written."""
        return self._meta().crc32(self._row)

    def verify(self):
        """True if the bytes in memory still match the recorded CRC32 (reads every byte)."""
        return zlib.crc32(self.content) == self._meta().crc32(self._row)

    @property
    def text(self):
        """The content decoded as UTF-8 (a copy; decoded on each access)."""
        cdef Generation gen
        if self._mapped():
            gen = <Generation>self._gen
            try:
                return PyUnicode_DecodeUTF8(gen.pool_base[self._pool] + self._start, self._end - self._start, "strict")
            except UnicodeDecodeError:
                if not gen._u16(self._row, ROW_FLAGS) & FLAG_TEXT:
                    raise  # bytes that were never text: the caller's to decode
                # published as text, verified UTF-8 then: the shared memory is corrupt
                gen._utf8(gen.pool_base[self._pool] + self._start, self._end - self._start,
                          f"text layer {self._layer}")
        return str(self.content, "utf-8")

    @property
    def is_array(self):
        """Whether the layer was published from a numpy array (see :meth:`array`)."""
        return _arrays.is_array(self.content)

    def array(self):
        """The numpy array the layer was published from: a read-only view into shared memory, no
        copy, with its dtype, shape and order. Same lifetime as ``content``. InvalidLayer if the
        layer was not published from an array (shmpool.data.arrays, off the hot path)."""
        return _arrays.decode(self.content, dimension_id=self._dim, layer_id=self._layer)

    def __len__(self):
        if self._mapped():
            return self._end - self._start
        return len(self.content)

    def __repr__(self):
        if self._gen is None and self._content is None:  # made by __new__ alone: repr never raises
            return f"<LoadedContext at {id(self):#x}, unmade>"
        return (f"LoadedContext(dimension_id={self.dimension_id}, layer_id={self.layer_id}, "
                f"generation={self.generation}, {len(self)} bytes)")


cdef object _unmade(LoadedContext ctx):
    return InvalidArgument(argument="context", value=f"<LoadedContext at {id(ctx):#x}>",
                           reason="was made by LoadedContext.__new__ alone: it has no bytes and no metadata "
                                  "(contexts come from lookups, or LoadedContext(dimension_id, layer_id, content, "
                                  "gen, row))")


@cython.no_gc  # refers to a Generation only, which never refers back
@cython.freelist(16)
@cython.final
cdef class _Bytes:
    """What a context's ``content`` memoryview exports: ``_len`` bytes at ``_at`` in a pool of
    ``_gen``, read-only. Holding the Generation is what keeps a bare view's bytes pinned."""

    cdef Generation _gen
    cdef const char *_at
    cdef Py_ssize_t _len

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a layer's content is read-only")
        PyBuffer_FillInfo(buffer, self, <void *>self._at, self._len, 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __dealloc__(self):
        if self._gen is not None:
            _holder_gone(<PyObject *>self._gen)


ctypedef void (*_destructor)(PyObject *) noexcept


cdef extern from "Python.h":
    ctypedef struct PyTypeObject:
        _destructor tp_dealloc
    PyTypeObject *_type_of "Py_TYPE" (PyObject *o)


cdef _destructor _context_dealloc = (<PyTypeObject *>LoadedContext).tp_dealloc

# Released contexts kept for the next lookups (what @cython.freelist(64) did, but ours: a spare
# keeps its reference count at 0 and None in _gen and _content, so making one from it is setting
# its fields and taking one reference, and releasing one into it touches neither the type's
# dealloc nor its allocator). Measured with callgrind: tp_new from Cython's free list and the
# release through _context_gone and the type's dealloc were ~170 instructions of a lookup and
# drop; this way ~60. A build that keeps a list of live objects (Py_TRACE_REFS) has no spares.
cdef extern from *:
    """
    #define SHM_CONTEXT_SPARES_MAX 64
    #ifdef Py_TRACE_REFS
    #define SHM_CONTEXT_SPARES 0
    #else
    #define SHM_CONTEXT_SPARES SHM_CONTEXT_SPARES_MAX
    #endif
    """
    enum: SHM_CONTEXT_SPARES_MAX  # the array's size
    enum: SHM_CONTEXT_SPARES      # how many are kept

cdef PyObject *_spares[SHM_CONTEXT_SPARES_MAX]
cdef Py_ssize_t _nspares = 0


cdef inline LoadedContext _context_of(Generation gen, int64_t layer, Py_ssize_t row, Py_ssize_t pool,
                                      int64_t start, int64_t end):
    """A context over ``[start, end)`` of pool ``pool`` of ``gen``: a spare if there is one."""
    global _nspares
    cdef LoadedContext ctx
    if _nspares > 0:
        _nspares -= 1
        ctx = <LoadedContext>_spares[_nspares]  # its one reference: the count was 0
    else:
        ctx = LoadedContext.__new__(LoadedContext)
    ctx._dim = gen.dim
    ctx._layer = layer
    ctx._gen = gen
    ctx._row = row
    ctx._pool = pool
    ctx._start = start
    ctx._end = end
    return ctx


cdef void _context_release(PyObject *o) noexcept:
    """The type's tp_dealloc: a context is being released (its reference count is 0, its fields
    intact). Its content view first, which, if nothing else holds it, takes its exporter with it
    (which counts our reference to the Generation as well as its own and leaves the word to us);
    then, if the cache is the Generation's only other holder, clear USERS (_holder_gone); then
    into the spares, or the type's own dealloc. Borrowed pointers only: nothing here may take a
    reference to ``o``, whose count is 0."""
    global _nspares
    cdef PyObject *gen = <PyObject *>(<LoadedContext>o)._gen
    if <PyObject *>(<LoadedContext>o)._content != <PyObject *>None:
        (<LoadedContext>o)._content = None
    if _type_of(gen) == <PyTypeObject *>Generation:
        _holder_gone(gen)
    if _nspares < SHM_CONTEXT_SPARES:
        # Spared first, then the generation let go of: its release may run Python code (a pin's
        # finalizer) that makes or releases contexts, and finds this one a complete spare.
        _spares[_nspares] = o
        _nspares += 1
        (<LoadedContext>o)._gen = None
    else:
        _context_dealloc(o)


(<PyTypeObject *>LoadedContext).tp_dealloc = _context_release


cdef str _block(Py_ssize_t i, Py_ssize_t total, dimension_id, name, layer_id, double frequency, tuple keywords,
                body):
    return (f"[{i}/{total}] dimension {dimension_id} \"{name}\" · layer {layer_id} · frequency "
            f"{frequency:.3f} · keywords: {', '.join(keywords) or '-'}\n{body}")


@cython.final
cdef class ContextCollection:
    """The contexts loaded along a path, in path order, plus the steps that were missing.

    One made by ``load_contexts`` is lazy: it holds the batch's generations and one word per
    step, and makes a context only when one is asked for (indexing, iteration, ``contexts``).
    ``len``, ``total_bytes`` and ``format_for_llm`` read the rows in place. ``contexts`` is a
    list made on first access and kept (changes to it are the collection's from then on).
    ``ContextCollection(contexts=None, missing=None)`` makes an eager one from a list.
    """

    def __reduce__(self):
        raise NotPicklable(what="batch of layer contexts", hint=_SEND_BYTES)

    cdef list _contexts       # None while lazy
    cdef public list missing
    cdef list _gens           # the distinct generations of a lazy batch
    cdef int64_t *_steps      # row << 16 | index into _gens, per context; -1: made eagerly
    cdef dict _made           # position -> context made at load time (compressed layers)
    cdef Py_ssize_t _n, _cap

    def __cinit__(self):
        self._steps = NULL
        self._n = 0
        self._cap = 0

    def __init__(self, contexts=None, missing=None):
        self._contexts = [] if contexts is None else contexts
        self.missing = [] if missing is None else missing

    def __dealloc__(self):
        cdef Py_ssize_t i
        cdef list gens = self._gens
        PyMem_Free(self._steps)
        if not gens:
            return
        # Contexts made from the batch go first (each finds our list's reference and leaves the
        # cache word alone); then each generation, counted once in the list, as one holder.
        self._contexts = None
        self._made = None
        for i in range(PyList_GET_SIZE(gens)):
            _holder_gone(PyList_GET_ITEM(gens, i))  # a Generation (_add), its list's reference counted

    @staticmethod
    cdef ContextCollection _lazy(Py_ssize_t capacity):
        cdef ContextCollection out = ContextCollection.__new__(ContextCollection)
        out.missing = []
        out._gens = []
        out._cap = max(1, capacity)
        out._steps = <int64_t *>PyMem_Malloc(out._cap * sizeof(int64_t))
        if out._steps is NULL:
            raise MemoryError()
        return out

    cdef int _add(self, Generation gen, Py_ssize_t row) except -1:
        cdef Py_ssize_t g, ngens = PyList_GET_SIZE(self._gens)
        gen._slot_row(row)  # read only when a context is asked for: checked now, as it comes in
        # Most paths cross a handful of dimensions: a search from the last one added is short.
        for g in range(ngens - 1, -1, -1):
            if <object>PyList_GET_ITEM(self._gens, g) is gen:
                break
        else:
            if ngens > 0xFFFF:  # a step word has 16 bits for its generation: make this one now
                return self._keep(gen._at(row))
            g = ngens
            self._gens.append(gen)
        self._steps[self._n] = (<int64_t>row << 16) | g
        self._n += 1
        return 0

    cdef int _add_made(self, LoadedContext ctx) except -1:
        if ctx._mapped():
            return self._add(<Generation>ctx._gen, ctx._row)
        return self._keep(ctx)

    cdef int _keep(self, LoadedContext ctx) except -1:
        """A step whose context was made at load time (compressed: inflated now), kept as made."""
        if self._made is None:
            self._made = {}
        self._made[self._n] = ctx
        self._steps[self._n] = -1
        self._n += 1
        return 0

    cdef inline Generation _gen_of(self, int64_t step):
        return <Generation>PyList_GET_ITEM(self._gens, step & 0xFFFF)

    cdef LoadedContext _make(self, Py_ssize_t i):
        cdef int64_t step = self._steps[i]
        if step < 0:
            return self._made[i]
        return self._gen_of(step)._at(step >> 16)

    @property
    def contexts(self):
        cdef Py_ssize_t i
        if self._contexts is None:
            self._contexts = [self._make(i) for i in range(self._n)]
        return self._contexts

    @contexts.setter
    def contexts(self, value):
        self._contexts = value

    def __len__(self):
        return self._n if self._contexts is None else len(self._contexts)

    def __iter__(self):
        cdef Py_ssize_t i
        if self._contexts is not None:
            yield from self._contexts
            return
        for i in range(self._n):
            yield self._make(i)

    def __getitem__(self, i):
        if self._contexts is not None or not isinstance(i, int):
            return self.contexts[i]
        if not -self._n <= i < self._n:  # compared as Python ints: 2**63 is out of range, not an OverflowError
            raise IndexError("context index out of range")
        cdef Py_ssize_t k = i
        if k < 0:
            k += self._n
        return self._make(k)

    @property
    def total_bytes(self):
        cdef Py_ssize_t i, total = 0
        cdef int64_t step
        cdef Generation gen
        if self._contexts is not None:
            return sum([len(c) for c in self._contexts])
        for i in range(self._n):
            step = self._steps[i]
            if step < 0:
                total += len(self._made[i])
            else:
                gen = self._gen_of(step)
                total += gen._i64(step >> 16, ROW_END) - gen._i64(step >> 16, ROW_START)
        return total

    def format_for_llm(self):
        """Plain text for an LLM prompt, one block per context in path order.

        The layout is stable (documented in docs/usage.md)::

            [1/2] dimension 3 "spatial" · layer 17 · frequency 0.420 · keywords: river, stone
            <the layer's text; binary layers appear as "<binary: N bytes>">

            [2/2] ...

        Missing steps, if any, follow as ``[missing] dimension D · layer L: reason`` lines.
        A lazy collection writes it from the rows: no context object is made.
        """
        cdef Py_ssize_t i, row, total = len(self)
        cdef int64_t step, start, end
        cdef Generation gen
        cdef double frequency
        blocks = []
        if self._contexts is not None:
            for i, ctx in enumerate(self._contexts, 1):
                body = ctx.text if ctx.is_text else f"<binary: {len(ctx.content)} bytes>"
                blocks.append(_block(i, total, ctx.dimension_id, ctx.dimension_name, ctx.layer_id, ctx.frequency,
                                     ctx.keywords, body))
        else:
            for i in range(self._n):
                step = self._steps[i]
                if step < 0:
                    ctx = self._made[i]
                    body = ctx.text if ctx.is_text else f"<binary: {len(ctx.content)} bytes>"
                    blocks.append(_block(i + 1, total, ctx.dimension_id, ctx.dimension_name, ctx.layer_id,
                                         ctx.frequency, ctx.keywords, body))
                    continue
                gen, row = self._gen_of(step), step >> 16
                start, end = gen._i64(row, ROW_START), gen._i64(row, ROW_END)
                if gen._u16(row, ROW_FLAGS) & FLAG_TEXT:
                    body = gen._utf8(gen._bytes(gen._u16(row, ROW_POOL), start, end), end - start,
                                     f"text layer {gen._i64(row, ROW_LAYER_ID)}")
                else:
                    body = f"<binary: {end - start} bytes>"
                memcpy(&frequency, gen._row(row) + ROW_FREQUENCY, 8)
                blocks.append(_block(i + 1, total, gen.dimension_id, gen.name, gen._i64(row, ROW_LAYER_ID),
                                     frequency, gen.keywords(row), body))
        for m in self.missing:
            blocks.append(f"[missing] dimension {m.dimension_id} · layer {m.layer_id}: {m.reason}")
        return "\n\n".join(blocks) + ("\n" if blocks else "")

    def __repr__(self):
        return f"ContextCollection({len(self)} contexts, {len(self.missing)} missing)"


cdef inline bint _add_plain(ContextCollection out, Generation gen, object layer_id) except -1:
    """Add ``layer_id`` of ``gen`` to a lazy batch if it is a plain (uncompressed) layer there;
    False for a compressed layer or a miss (the caller takes the single lookup's path)."""
    cdef int64_t j = _probe(gen._table, gen.mask, _key_of(layer_id), gen.max_probe)
    if j < 0:
        return False
    cdef int64_t meta = gen._table[j + SLOT_META]
    if meta < 0 or (type(layer_id) is not int and type(layer_id) is _LayerKey and not _key_holds(gen, meta, layer_id)):
        return False  # compressed, or another key's layer: the single lookup inflates or raises
    cdef int64_t start = gen._table[j + SLOT_START], end = gen._table[j + SLOT_END]
    if not gen._in_pool(meta & POOL_MASK, start, end):
        gen._bytes(meta & POOL_MASK, start, end)  # raises
    out._add(gen, meta >> POOL_BITS)
    return True


# ----------------------------------------------------------------- the reader's lookups

def _no_move(gen):
    # A table without an owner (tests): nothing is held anywhere, so nothing moves.
    pass


@cython.final
cdef class DimTable:
    """A reader's dimension views, {dimension id: DimView}: the ids below SMALL_IDS in a list
    indexed by id, so that a lookup finds a small id by index (~100 instructions less than a
    dict's hash and probe), any other id in a dict. The mapping of shmpool.data.mapping owns
    it; the lookup path only reads it. The few dict verbs that owner uses are all it offers.

    The list is as long as the largest small id in it, not SMALL_IDS, and a small id is in the
    list alone: a reader of 14 dimensions keeps 14 slots and an empty dict, where a list of 256
    slots and a dict of every view were ~2.8 kB of its private memory (docs/performance.md,
    issue 22). A small id past the list's end is nowhere."""

    cdef dict _map               # DimView of each id outside [0, SMALL_IDS)
    cdef list _small             # DimView or None, for ids 0 .. len(_small) - 1 (< SMALL_IDS)
    cdef Py_ssize_t _count       # views in _small
    cdef public object move      # move(gen): the owner's "store it in the pin words" (DimView.drop)

    def __cinit__(self):
        self._map = {}
        self._small = []
        self._count = 0

    cdef inline DimView find(self, object dimension_id):
        """The view of ``dimension_id`` (an exact int), or None."""
        cdef int64_t dim = _key_of(dimension_id)
        cdef PyObject *found
        if 0 <= dim < PyList_GET_SIZE(self._small):
            return <DimView>PyList_GET_ITEM(self._small, dim)
        found = PyDict_GetItemWithError(self._map, dimension_id)  # an int's hash cannot fail
        return None if found == NULL else <DimView>found

    cdef Py_ssize_t _slot(self, object dimension_id) except -2:
        """Its index in the list if ``dimension_id`` is a small id (an int or has __index__), else -1."""
        if not isinstance(dimension_id, int):
            if not hasattr(type(dimension_id), "__index__"):
                return -1
            dimension_id = operator.index(dimension_id)
        if 0 <= dimension_id < SMALL_IDS:
            return dimension_id
        return -1

    def get(self, dimension_id, default=None):
        cdef Py_ssize_t i = self._slot(dimension_id)
        if i < 0:
            return self._map.get(dimension_id, default)
        found = self._small[i] if i < len(self._small) else None
        return default if found is None else found

    def __getitem__(self, dimension_id):
        found = self.get(dimension_id)
        if found is None:
            raise KeyError(dimension_id)
        return found

    def __setitem__(self, dimension_id, DimView view not None):
        if type(dimension_id) is not int:
            raise InvalidArgument(argument="dimension_id", value=dimension_id, reason="is not an int")
        old = self.get(dimension_id)
        if old is not None and old is not view:
            self._drop(old, True)  # one view per cache word: the old one lets go first
        cdef Py_ssize_t i = self._slot(dimension_id)
        if i < 0:
            self._map[dimension_id] = view
            return
        if i >= len(self._small):
            self._small.extend([None] * (i + 1 - len(self._small)))
        if self._small[i] is None:
            self._count += 1
        self._small[i] = view

    def __contains__(self, dimension_id):
        return self.get(dimension_id) is not None

    def __len__(self):
        return self._count + len(self._map)

    def __iter__(self):
        return iter([dim for dim, _ in self.items()])

    def values(self):
        return [view for _, view in self.items()]

    def items(self):
        out = [(dim, view) for dim, view in enumerate(self._small) if view is not None]
        out.extend(self._map.items())
        return out

    def clear(self, bint write=True):
        """Drop every view, each letting go of its cached generation first (``write``: clearing
        its cache word; a forked child's views name its parent's words, so it passes False)."""
        views = self.values()
        self._map.clear()
        self._small = []
        self._count = 0
        for view in views:
            self._drop(view, write)

    cdef _drop(self, DimView view, bint write):
        if view.current is not NOT_MAPPED:
            view.drop(self.move if self.move is not None else _no_move, write)

    def __repr__(self):
        return f"DimTable({dict(self.items())!r})"


cdef class ReaderCore:
    """The lookup methods of shmpool.data.reader.Reader, which subclasses this type. The slow
    paths are the mapping's (shmpool.data.mapping.MappedGenerations, ``mapped``):
    ``dimension(id)`` (first use), ``refresh(dim_view)`` (drop the cached generation, announce
    the published one in the cache word, re-check, map), ``honour_epoch(epoch)`` and
    ``closed_error()``; and the reader's ``_batch_again(steps, strict)``."""

    def __reduce__(self):
        raise NotPicklable(what="reader", hint=_SEND_NAME)

    cdef object _mapped          # the reader's MappedGenerations
    cdef DimTable _dim_table     # its ``dims``
    cdef object _dir             # memoryview of the directory words (int64)
    cdef object _words           # memoryview of the control words (int64)
    cdef Py_ssize_t _dir_len, _seq_word, _epoch_word
    cdef int64_t _touched_read
    cdef int64_t _epoch          # the last W.PIN_EPOCH honoured (mapped.honour_epoch)
    cdef uint64_t _batches       # batches run: marks the cache words a batch entered (DimView._batch)

    def _core_attach(self, mapped, Py_ssize_t seq_word, int64_t touched_read, Py_ssize_t epoch_word):
        """Look up through ``mapped`` (its ``dims``, ``dir_mv`` and ``words_mv``, and its slow paths)."""
        directory, words = mapped.dir_mv, mapped.words_mv
        for mv in (directory, words):
            if type(mv) is not memoryview or mv.format != "q" or not mv.c_contiguous:
                raise InvalidArgument(argument="directory/words", value=mv, reason="is not a contiguous 'q' memoryview")
        for word in (seq_word, epoch_word):
            if not 0 <= word < len(words):
                raise InvalidArgument(argument="word", value=word, reason=f"is outside {len(words)} words")
        self._mapped, self._dim_table = mapped, mapped.dims
        self._dir, self._words = directory, words
        self._dir_len, self._seq_word, self._touched_read = len(directory), seq_word, touched_read
        self._epoch_word = epoch_word
        self._epoch = words[epoch_word]

    @cython.final
    cdef inline DimView _view(self, object dimension_id):
        if self._dim_table is None:
            raise InvalidArgument(argument="reader", value=self, reason="was never attached")
        return self._dim_table.find(dimension_id)

    @cython.final
    cdef inline int64_t *_enter(self, DimView dv, Generation gen, int64_t *idle) noexcept:
        """Mark ``gen``, the cached generation of ``dv``, BUSY and check it is still the published
        one and the epoch has not moved: the cache word's address, its value before in ``idle``;
        NULL (nothing changed, or the word put back) when the mapping must be asked. No Python
        code runs from here to :meth:`_leave`: no other thread of this process writes the word."""
        cdef int64_t g = gen.generation
        cdef int64_t *directory
        cdef int64_t *words
        cdef int64_t *w = dv._cw()
        if w == NULL or g <= 0 or self._dir is None:
            return NULL
        directory = _words_of(<PyObject *>self._dir)
        words = _words_of(<PyObject *>self._words)
        if (directory == NULL or words == NULL or words[self._epoch_word] != self._epoch
                or <size_t>dv.gen_pos >= <size_t>self._dir_len or <size_t>dv.touch_pos >= <size_t>self._dir_len):
            return NULL
        idle[0] = w[0]
        if (idle[0] >> CACHE_SHIFT) != g or idle[0] & CACHE_BUSY:  # a slow path of another thread holds it
            return NULL
        if idle[0] & CACHE_USERS:
            # Pinned without a break since the lookup that set USERS (its BUSY came first), and
            # cleared only by this process, which runs nothing else meanwhile: no announcement.
            if shm_load(directory + dv.gen_pos) != g:
                return NULL
        else:
            # BUSY, then GENERATION: store->load order, from the coordinator's membarrier when
            # this process is registered (a compiler barrier here), else from an SC pair.
            if _asym:
                shm_store(w, idle[0] | CACHE_BUSY)
                shm_compiler_fence()
            else:
                shm_store_sc(w, idle[0] | CACHE_BUSY)
            if fault_armed():
                fault("lookup.busy")  # BUSY, GENERATION not re-checked yet
            if (shm_load(directory + dv.gen_pos) if _asym else shm_load_sc(directory + dv.gen_pos)) != g:
                shm_store(w, idle[0])  # superseded: never touched; the mapping drops it
                return NULL
        # Stored only when 0, i.e. once per coordinator sampling period: readers do not fight
        # over its cache line.
        if directory[dv.touch_pos] == 0:
            directory[dv.touch_pos] = self._touched_read
        return w

    @cython.final
    cdef inline LoadedContext _fast(self, object dimension_id, object layer_id):
        """The lookup when nothing needs Python: ``dimension_id`` and ``layer_id`` are exact ints,
        the dimension is mapped, its cached generation is still published, the epoch has not
        moved, and the layer is a plain one. None: ask :meth:`_slow`.

        Every object is reached through borrowed pointers (the reader holds its table, the table
        its views, a view its generation, and no Python code runs here to change them): the
        references a typed local takes and gives back were ~40 instructions a lookup."""
        cdef PyObject *table = <PyObject *>self._dim_table
        cdef PyObject *dv
        cdef PyObject *g
        cdef int64_t idle, meta, start, end, j
        cdef int64_t dim = _key_of(dimension_id), key = _key_of(layer_id)
        cdef int64_t *w
        if table == <PyObject *>None:
            return None  # never attached: the slow path says so
        if 0 <= dim < _list_size(<PyObject *>(<DimTable>table)._small):  # ids past it: the dict
            dv = _list_item(<PyObject *>(<DimTable>table)._small, dim)
        else:
            dv = PyDict_GetItemWithError((<DimTable>table)._map, dimension_id)  # an int's hash cannot fail
            if dv == NULL:
                return None
        if dv == <PyObject *>None:
            return None
        g = <PyObject *>(<DimView>dv).current
        w = self._enter(<DimView>dv, <Generation>g, &idle)
        if w == NULL:
            return None
        j = _probe((<Generation>g)._table, (<Generation>g).mask, key, (<Generation>g).max_probe)
        if j < 0 or (<Generation>g)._table[j + SLOT_META] < 0:  # a miss or a compressed layer: in Python
            shm_store(w, idle)
            return None
        meta = (<Generation>g)._table[j + SLOT_META]
        start, end = (<Generation>g)._table[j + SLOT_START], (<Generation>g)._table[j + SLOT_END]
        # The one bounds check: the bytes in the pool, the row in the index (unsigned: one compare).
        if (not (<Generation>g)._in_pool(meta & POOL_MASK, start, end)
                or <uint64_t>(meta >> POOL_BITS) >= <uint64_t>(<Generation>g).layer_count):
            shm_store(w, idle)
            return None  # the slow path raises RegionFormatError naming them
        cdef LoadedContext ctx = _context_of(<Generation>g, key, meta >> POOL_BITS, meta & POOL_MASK, start, end)
        if fault_armed():
            fault("lookup.made")  # a context over the generation, BUSY still set
        if idle != ((<Generation>g).generation << CACHE_SHIFT | CACHE_USERS):
            shm_store(w, (<Generation>g).generation << CACHE_SHIFT | CACHE_USERS)  # release: the context holds it now
        return ctx

    @cython.final
    cdef Generation _checkout(self, object dimension_id):
        """The dimension's published generation, mapped, with USERS set in its cache word (the
        caller may keep objects over it; :func:`_settle` clears USERS once none is left). Goes
        through the mapping (Python) as often as it takes: first use, a new generation, a new
        epoch. Raises DimensionNotFound, ReaderClosed, ReloadTimeout."""
        cdef DimView dv
        cdef Generation gen
        cdef int64_t idle, epoch
        cdef int64_t *w
        cdef int64_t *words
        while True:
            words = _words_of(<PyObject *>self._words) if self._words is not None else NULL
            if words == NULL:
                raise self._mapped.closed_error()
            epoch = words[self._epoch_word]
            if epoch != self._epoch:
                # A publication since the last lookup: let go of every superseded mapping (and
                # say so in EPOCH_SEEN). Instead of a thread: the cache word lets the coordinator
                # reclaim what an idle reader keeps without it.
                self._mapped.honour_epoch(epoch)
                self._epoch = epoch
            dv = self._view(dimension_id)
            if dv is None:
                dv = self._mapped.dimension(dimension_id)  # first use (raises DimensionNotFound)
            gen = dv.current
            w = self._enter(dv, gen, &idle)
            if w != NULL:
                if idle != (gen.generation << CACHE_SHIFT | CACHE_USERS):
                    shm_store(w, gen.generation << CACHE_SHIFT | CACHE_USERS)
                return gen
            self._mapped.refresh(dv)  # drop, announce the new generation, re-check GENERATION, map

    @cython.final
    cdef _settle_dim(self, object dimension_id):
        cdef DimView dv = self._view(dimension_id)
        if dv is not None:
            _settle(dv)

    @cython.final
    cdef LoadedContext _slow(self, object dimension_id, object layer_id, bint absent_ok=False):
        """A lookup through Python: first use, a new generation or epoch, a miss (LayerNotFound
        names what exists; None with ``absent_ok``), a compressed layer (inflated), a slot that
        fails its bounds check."""
        try:
            return self._checkout(dimension_id)._context(layer_id, absent_ok)
        finally:
            self._settle_dim(dimension_id)  # the context made, if any, keeps USERS set

    def load_layer_context(self, dimension_id, layer_id):
        """The layer's content as a zero-copy read-only view, with its metadata. O(1), lock-free.

        Ids are ints; numpy integers are accepted (and returned as ints). Raises InvalidId (a
        TypeError) for anything else, bools and floats included; DimensionNotFound /
        LayerNotFound naming the ids and what exists; ReaderClosed on a closed reader.
        """
        # The hot path (no locks, no logging, no system calls; scripts/bench_readers.py times
        # it): two exact type tests, the dimension's view (an index, or one dict lookup), the
        # epoch, the cache word (BUSY), the GENERATION and TOUCHED words, the probe of the
        # shared table, one bounds check, the context object, the cache word (USERS). The type
        # tests come first because True and 3.0 would otherwise find dimension 1 and 3 in the
        # dict. The arguments are never rebound here (that would cost a reference each).
        cdef LoadedContext ctx
        if type(dimension_id) is int and type(layer_id) is int:
            ctx = self._fast(dimension_id, layer_id)
            if ctx is not None:
                return ctx
            return self._slow(dimension_id, layer_id)
        return self._lookup_ids(dimension_id, layer_id)

    def find(self, dimension_id, layer_id):
        """:meth:`load_layer_context`, but None where that raises LayerNotFound: a dimension
        that has no such layer (or key) costs a probe, not an exception built in Python (~5 us,
        scripts/bench_keys.py). A dimension that is not published still raises DimensionNotFound."""
        cdef LoadedContext ctx
        if type(dimension_id) is int and type(layer_id) is int:
            ctx = self._fast(dimension_id, layer_id)
            if ctx is not None:
                return ctx
            return self._slow(dimension_id, layer_id, True)
        return self._lookup_ids(dimension_id, layer_id, True)

    @cython.final
    cdef LoadedContext _lookup_ids(self, object dimension_id, object layer_id, bint absent_ok=False):
        # Off the hot path: a dimension by name, a layer by key, numpy integers (Reader._ids).
        cdef LoadedContext ctx
        if type(layer_id) is str and _native_keys():
            # A str key goes to the generation as it is (Generation._keyed hashes it): making
            # its LayerKey cost ~1 us, paid once per key only while ids kept it among its last
            # 1,024 (scripts/bench_keys.py, distinct_keys_ns).
            if type(dimension_id) is not int:
                dimension_id = self._ids(dimension_id, 0)[0]
            return self._slow(dimension_id, layer_id, absent_ok)
        dimension_id, layer_id = self._ids(dimension_id, layer_id)
        if type(dimension_id) is int and type(layer_id) is int:
            ctx = self._fast(dimension_id, layer_id)
            if ctx is not None:
                return ctx
        return self._slow(dimension_id, layer_id, absent_ok)

    def _checkout_generation(self, dimension_id):
        """The published generation of ``dimension_id`` (an int), mapped, USERS set: for the
        reader's Python paths (scan, layer_ids), which call :meth:`_settle_generation` after."""
        return self._checkout(dimension_id)

    def _settle_generation(self, dimension_id):
        self._settle_dim(dimension_id)

    def load_contexts(self, path, *, bint strict=True):
        """Load every step of ``path`` in order, at one instant; a lazy ContextCollection.

        With ``strict`` (default) the first missing step raises; otherwise missing steps are
        listed in ``.missing`` with the reason, never silently dropped. Ids are checked as by
        :meth:`load_layer_context` (by NavigationPath), before anything is loaded.
        """
        cdef tuple steps = _steps_of(path)
        # One instant per batch: a publish (W.PUBLISH_SEQ moved, or odd: a commit in progress)
        # during the batch may have mixed generations, so then it is read again (in Python).
        cdef int64_t *words = _words_of(<PyObject *>self._words) if self._words is not None else NULL
        if words == NULL:
            raise self._mapped.closed_error()
        cdef int64_t seq = shm_load(words + self._seq_word)
        if not seq & 1:
            try:
                out = self._batch_of(steps, strict)
            except _BATCH_MISSES:
                if self._seq_now() == seq:
                    raise
            else:
                if self._seq_now() == seq:
                    return out
        return (<object>self)._batch_again(_NavigationPath(steps), strict)

    @cython.final
    cdef int64_t _seq_now(self) except? -1:
        cdef int64_t *words = _words_of(<PyObject *>self._words)
        if words == NULL:
            raise self._mapped.closed_error()
        return shm_load(words + self._seq_word)

    def _batch(self, steps, bint strict):
        """One pass over a NavigationPath, no sequence check (Reader._batch_again's retries)."""
        return self._batch_of(steps._steps, strict)

    @cython.final
    cdef ContextCollection _batch_of(self, tuple steps, bint strict):
        """One pass over ``steps`` (checked (dimension, layer) int pairs); no sequence check.

        Each dimension's cache word is entered (BUSY, unless USERS is set already) once, at its
        first inline step, and left with USERS set (the batch holds the generation) before any
        step that needs Python and at the end: a batch of 20 steps over 3 dimensions makes at
        most 3 SC stores, not 20."""
        cdef Py_ssize_t pos, k, n = PyTuple_GET_SIZE(steps)
        cdef ContextCollection out = ContextCollection._lazy(n)
        cdef Generation gen
        cdef DimView dv
        cdef int64_t *w
        cdef int64_t idle
        cdef int64_t *entered[BATCH_ENTERED]   # cache words this batch entered (BUSY, or USERS already set)
        cdef int64_t users[BATCH_ENTERED]      # the value that ends the batch: USERS for its generation
        cdef Py_ssize_t nentered = 0
        self._batches += 1
        cdef uint64_t batch = self._batches
        try:
            for pos in range(n):
                step = <tuple>PyTuple_GET_ITEM(steps, pos)
                dim = <object>PyTuple_GET_ITEM(step, 0)
                layer = <object>PyTuple_GET_ITEM(step, 1)
                dv = self._view(dim)
                if dv is not None:
                    # The common step inline: the cached generation is still published and holds a
                    # plain layer. Anything else goes through the single lookup.
                    gen = dv.current
                    if dv._batch == batch:
                        if _add_plain(out, gen, layer):  # entered by an earlier step of this batch
                            continue
                    elif nentered < BATCH_ENTERED:
                        w = self._enter(dv, gen, &idle)
                        if w != NULL:
                            dv._batch = batch
                            entered[nentered] = w
                            users[nentered] = gen.generation << CACHE_SHIFT | CACHE_USERS
                            nentered += 1
                            if _add_plain(out, gen, layer):
                                continue
                            users[nentered - 1] = idle  # entered, nothing added: put back as it was
                _leave_all(entered, users, nentered)
                nentered = 0
                self._batches += 1  # what was entered is left: the views' marks are stale now
                batch = self._batches
                gen = None  # not a holder of it while the slow path settles its cache word
                try:
                    ctx = self._slow(dim, layer)
                except _BATCH_MISSES as exc:
                    if strict:
                        raise
                    out.missing.append(_MissingStep(pos, dim, layer, str(exc)))
                    continue
                out._add_made(ctx)
        finally:
            _leave_all(entered, users, nentered)
        return out


cdef inline void _leave_all(int64_t **entered, int64_t *end, Py_ssize_t n) noexcept:
    """End a batch's sections: USERS for each generation the batch added a step of (it holds
    them), the word as it was for one it entered and added nothing of (release stores)."""
    cdef Py_ssize_t i
    for i in range(n):
        if entered[i][0] != end[i]:
            shm_store(entered[i], end[i])


cdef class SnapshotCore:
    """The lookup methods of shmpool.data.snapshot.Snapshot, which subclasses this type and
    supplies ``_resolve(dimension_id)``: the generation of the snapshot's instant, mapped (it
    raises SnapshotClosed, DimensionNotFound, DimensionEvicted), and ``_dimension(dimension)``:
    a dimension argument as its id (a str is a name)."""

    def __reduce__(self):
        raise NotPicklable(what="snapshot", hint=_SEND_NAME)

    cdef public dict _gens      # dimension id -> Generation, filled on first use

    cdef Generation _generation(self, object dimension_id):
        cdef PyObject *found = NULL
        if self._gens is not None:
            found = PyDict_GetItemWithError(self._gens, dimension_id)
        if found == NULL:
            return (<object>self)._resolve(dimension_id)
        return <Generation?><object>found

    def load_layer_context(self, dimension_id, layer_id):
        """The layer as it was at the snapshot's instant; zero-copy, as Reader.load_layer_context.

        Raises DimensionNotFound (not published at the instant), DimensionEvicted, LayerNotFound,
        SnapshotClosed, InvalidId."""
        # One dict lookup for the generation, one probe of its shared layer index: the
        # generation is fixed, so the directory is not read at all.
        if type(dimension_id) is not int or type(layer_id) is not int:
            # Off the hot path: a dimension by name (the snapshot's _dimension), a layer by key.
            dimension_id, layer_id = (<object>self)._dimension(dimension_id), _as_id(layer_id, "layer_id")
        return self._generation(dimension_id)._context(layer_id)

    def find(self, dimension_id, layer_id):
        """:meth:`load_layer_context`, but None where that raises LayerNotFound (as ReaderCore.find)."""
        if type(dimension_id) is not int or type(layer_id) is not int:
            dimension_id, layer_id = (<object>self)._dimension(dimension_id), _as_id(layer_id, "layer_id")
        return self._generation(dimension_id)._context(layer_id, True)

    def load_contexts(self, path, *, bint strict=True):
        """Every step of ``path`` at the snapshot's instant; ``strict`` as in Reader.load_contexts."""
        cdef tuple steps = _steps_of(path)
        cdef Py_ssize_t pos, n = PyTuple_GET_SIZE(steps)
        cdef ContextCollection out = ContextCollection._lazy(n)
        cdef Generation gen
        for pos in range(n):
            step = <tuple>PyTuple_GET_ITEM(steps, pos)
            dim = <object>PyTuple_GET_ITEM(step, 0)
            layer = <object>PyTuple_GET_ITEM(step, 1)
            try:
                gen = self._generation(dim)
                if not _add_plain(out, gen, layer):
                    out._add_made(gen._context(layer))
            except _BATCH_MISSES as exc:
                if strict:
                    raise
                out.missing.append(_MissingStep(pos, dim, layer, str(exc)))
        return out


# ----------------------------------------------------------------- the benchmarks' limit row

cdef class PrebuiltSlice:
    """The benchmarks' limit row: a C method of the lookup's shape, ``get(dimension_id,
    layer_id)``, that returns a memoryview slice made beforehand. Nothing a lookup can do is
    cheaper than this call; scripts/bench_readers.py and bench_peers.py time it beside the lookup."""

    cdef object view

    def __init__(self, view):
        self.view = memoryview(view)[0:len(view)]

    def get(self, dimension_id, layer_id):
        return self.view
