"""The control segment, byte by byte. docs/shm-layout.md lists the same fields in the same order.

The control segment is the one place every process agrees on. It starts with an immutable
header (written once by the coordinator; the magic last, so a half-written header never looks
valid), followed by sections at 64-byte-aligned offsets that the header records:

    words      int64[WORDS]                      mutable scalars: lock owner, usage, counters
    pools      int64[pool_count, POOL_COLS]      one row per pool, reserved growth rows included
    records    int64[max_records, RECORD_COLS]   one row per allocation (the source of truth)
    bitmaps    uint8[...]                        one bit per block per pool, 1 = in use
    backed     uint8[...]                        one bit per block per pool, 1 = its pages are reserved
    directory  int64[max_dimensions, DIR_COLS]   dimension id -> published region, by generation
    readers    int64[max_readers, READER_COLS]   attached reader processes
    pins       cache words int64[entry blocks, max_readers, 8], then pin words
               int64[max_dimensions, max_readers, PIN_COLS]: the generations each reader holds
    tags       int64[max_records, TAG_COLS]      which generation of which dimension a record holds
    files      int64[max_files, FILE_COLS]       mapped region files: pool number pool_count + f

Every mutable field is an aligned little-endian int64, so a single store is indivisible on the
64-bit CPUs we run on: readers never see half a value, which is what lets the read path go
without locks (generation numbers, see directory below).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MAGIC", "LAYOUT_VERSION", "HEADER", "ControlWord", "InstanceState", "PoolCol", "RecordCol", "RecordState",
    "DirCol", "DirSlotCol", "Touched", "ReaderCol", "PinCol", "CacheBit", "CACHE_SHIFT", "TagCol", "FileCol",
    "W", "P", "R", "D", "S", "RD", "PN", "RT", "F", "SLOT_COLS",
    "POOL_COLS", "RECORD_COLS", "DIR_COLS", "READER_COLS", "PIN_COLS", "CACHE_LINE_WORDS", "TAG_COLS", "FILE_COLS",
    "MAX_POOL_NUMBERS", "WORDS", "Layout", "cache_word", "cache_blocks",
    "Control",
]

MAGIC = b"SHMPCTL1"
LAYOUT_VERSION = 11  # 2: pool rows gained PRESENT and BASE (pool growth); 3: exact pins, record tags;
# 4: backed bitmaps (pages reserved in /dev/shm), words BACKED_BYTES and SHM_FULL; 5: a directory
# slot points at a generation's shared layer index (shmpool/data/layer_index.py), not at a region;
# 6: word PUBLISH_SEQ (consistent snapshots), reader column WAITING and the per-reader gwR
# semaphores (generation wake-ups); 7: the table lock is a robust mutex in words 56-63 (no flock,
# no lock semaphore); 8: the files section (region files served by mapping, coordinator/region_store.py);
# 9: RecordState.LENT (a job's spilled arguments: no dead-owner sweep frees them);
# 10: pin column CACHE, a reader's cache word (no pin-watch thread); 11: the pins section split in
# cache words (a line per reader and 8 entries) and pin words (entry-major), both shared page by
# page among readers (a page per reader before), and W.ENTRIES_HIGH
ALIGN = 64  # every section of every segment starts on its own cache line

HEADER = struct.Struct(
    "<"
    "8s"   # magic, b"SHMPCTL1"; written last during creation
    "I"    # layout_version
    "I"    # header_size (= HEADER.size)
    "Q"    # control_size: bytes of the whole control segment
    "Q"    # instance_token: random; handles carry it so a foreign handle is recognised
    "Q"    # created_ns: time.time_ns() at creation
    "I"    # pool_count
    "I"    # max_records
    "I"    # max_dimensions
    "I"    # max_readers
    "Q"    # words_offset
    "Q"    # pools_offset
    "Q"    # records_offset
    "Q"    # bitmaps_offset
    "Q"    # directory_offset
    "Q"    # readers_offset
    "Q"    # pins_offset
    "64s"  # instance name, UTF-8, NUL padded
    "Q"    # tags_offset
    "Q"    # backed_offset: the backed bitmaps, same sizes as the bitmaps (version 4)
    "I"    # max_files: rows of the files section (version 8)
    "I"    # reserved, 0
    "Q"    # files_offset (version 8)
)
HEADER_SIZE = 256  # HEADER.size rounded up so the words start on a cache line
assert HEADER.size <= HEADER_SIZE


class ControlWord(IntEnum):
    """Indices into the words section (int64 each)."""
    LOCK_OWNER_PID = 0      # pid holding the table lock, 0 when free (written by the holder only)
    UNUSED_1 = 1            # 1-2: the flock lock's start token and waiting flag, gone with it
    UNUSED_2 = 2
    LOCK_RECOVERIES = 3     # times a holder died inside its critical section (repaired by the next)
    MEMORY_LIMIT = 4        # bytes, over all pools
    WARN_PERMILLE = 5       # 750: log a warning above this usage
    EVICT_PERMILLE = 6      # 850: call the eviction hook above this usage
    REFUSE_PERMILLE = 7     # 950: refuse allocations that would pass this usage
    USED_BYTES = 8          # sum of reserved bytes (whole blocks) of live allocations
    PEAK_BYTES = 9          # highest USED_BYTES seen
    ALLOC_COUNT = 10        # successful allocations
    FREE_COUNT = 11         # successful frees
    FAIL_COUNT = 12         # failed allocations (no space or limit)
    LIMIT_REFUSALS = 13     # failures due to the limit (subset of FAIL_COUNT)
    RECLAIMED = 14          # allocations reclaimed from dead processes
    ALLOC_SERIAL = 15       # last serial handed out; handles carry theirs
    LIVE_RECORDS = 16       # live allocation records
    COORDINATOR_PID = 17    # owning process
    COORDINATOR_START = 18
    STATE = 19              # InstanceState
    DIR_VERSION = 20        # +1 whenever a dimension id is added to or removed from the directory
    READERS_ATTACHED = 21   # live reader slots
    READERS_PEAK = 22       # highest READERS_ATTACHED seen
    POOL_GROWTHS = 23       # growth segments added to full pools
    CONFIGURED_POOLS = 24   # pool rows 0..n-1 are configured; the rest are reserved growth rows
    PIN_EPOCH = 25          # +1 per publication: "readers, let go of what is no longer published"
    MAX_PIN_AGE_MS = 26     # a pin blocking reclamation longer than this is listed as stale
    BACKED_BYTES = 27       # pool bytes whose pages are reserved (allocated in /dev/shm)
    SHM_FULL = 28           # allocations refused because /dev/shm is full (subset of FAIL_COUNT)
    PUBLISH_SEQ = 29        # seqlock over every publication: odd while directory GENERATION words change
    ENTRIES_HIGH = 30       # directory entries 0..n-1 were ever claimed; pin words of later ones are zero
    LOCK_MUTEX = 56         # 56-63: the table's pthread_mutex_t (robust, process-shared; shmpool._core)


WORDS = 64  # room to grow without a layout change



class InstanceState(IntEnum):
    """ControlWord.STATE: whether the coordinator serves."""
    RUNNING = 1
    STOPPING = 2    # readers fail new waits with AttachError, workers exit


# Plain ints: compared on the read path, where an enum member costs an attribute lookup.
STATE_RUNNING = int(InstanceState.RUNNING)
STATE_STOPPING = int(InstanceState.STOPPING)


class PoolCol(IntEnum):
    """Columns of a pool row."""
    BLOCK_SIZE = 0
    BLOCK_COUNT = 1
    USED_BLOCKS = 2
    PEAK_USED = 3
    ALLOC_COUNT = 4
    FAIL_COUNT = 5
    BITMAP_OFFSET = 6  # byte offset of this pool's bitmap in the control segment
    BITMAP_BYTES = 7
    PRESENT = 8        # 1: its segment exists; 0: a reserved growth row, not yet created
    BASE = 9           # the configured pool this row extends (its own index for a configured pool)


POOL_COLS = 10


class RecordCol(IntEnum):
    """Columns of an allocation record. STATE is written last on allocate and first on free."""
    STATE = 0        # RecordState
    POOL = 1
    FIRST_BLOCK = 2
    BLOCK_COUNT = 3
    NBYTES = 4       # bytes requested (<= BLOCK_COUNT * block size)
    SERIAL = 5       # ALLOC_SERIAL at allocation; a stale handle's serial no longer matches
    OWNER_PID = 6    # reclaimed when this process is dead
    OWNER_START = 7


RECORD_COLS = 8


class RecordState(IntEnum):
    """RecordCol.STATE: the commit word of an allocation record."""
    FREE = 0
    LIVE = 1
    # Live, and lent to the job board (a job's spilled arguments): the dead-owner sweep leaves
    # it, whichever process sweeps, because a slot may still name it for a worker to read; the
    # coordinator frees it once its owner is dead and no slot names it (jobs/arg_spill.py).
    LENT = 2


class DirCol(IntEnum):
    """Columns of a directory entry: two slots; the published one is the slot holding GENERATION."""
    DIMENSION_ID = 0   # 0 = entry unused
    GENERATION = 1     # published generation; the commit point of crystallization
    SLOT0 = 2          # slot k starts at SLOT0 + k * SLOT_COLS; usually k = generation & 1 (jumps: the other)
    TOUCHED = 14       # Touched: readers 0 -> 1 on a lookup, 2 = "reload me" (evicted); coordinator resets to 0


class DirSlotCol(IntEnum):
    """Columns within a directory slot: where one generation's region lives."""
    GENERATION = 0     # the generation this slot describes
    POOL = 1
    FIRST_BLOCK = 2
    NBYTES = 3         # exact region length
    RECORD = 4         # allocation record holding the blocks
    SERIAL = 5         # that record's serial


SLOT_COLS = 6
DIR_COLS = 16  # 2 + 2 * SLOT_COLS + TOUCHED = 15 used, 1 spare



class Touched(IntEnum):
    """DirCol.TOUCHED: what readers did with a dimension since the coordinator last looked."""
    NONE = 0
    READ = 1        # looked up at least once
    RELOAD = 2      # found evicted: "reload me"


# Plain ints: a lookup stores READ into the word (the read path).
TOUCHED_NONE, TOUCHED_READ, TOUCHED_RELOAD = (int(t) for t in Touched)


class ReaderCol(IntEnum):
    """Columns of a reader slot."""
    PID = 0          # 0 = slot free
    START = 1
    ATTACHED_NS = 2
    EPOCH_SEEN = 3   # the last W.PIN_EPOCH this reader honoured (at a lookup: dropped what was superseded)
    SEEN_NS = 4      # time.time_ns() when it did
    WAITING = 5      # 0, or W.PIN_EPOCH + 1 when its threads last armed: post my gen-wait semaphore
    HANDOVER_NS = 6  # 0, or the deadline of a fork hand-over: claimed for a forked child (shmpool/data/fork.py)


READER_COLS = 8


class PinCol(IntEnum):
    """The pin words of one reader for one directory entry: the generations it holds.

    Pinned = {EXACT0, EXACT1} (0 = empty) plus [RANGE_LO, RANGE_HI] when RANGE_LO != 0, plus the
    generation of the reader's **cache word** for the entry while its BUSY or USERS bit is set
    (``Control.caches``: generation << 2 | USERS << 1 | BUSY, the generation the reader keeps
    mapped for its lookups, 0 = none; written only by the row's process, shmpool/_core/_lookup.pyx).
    A held generation never moves between words while held (see shmpool/data/pins.py for why);
    one leaves the cache word only after it was stored in the exact words or the range, if
    anything still holds it."""
    EXACT0 = 0
    EXACT1 = 1
    RANGE_LO = 2     # the range holds what did not fit in the exact words; 0 = no range
    RANGE_HI = 3


PIN_COLS = 4
EXACT_PINS = 2
# Cache words to a line (layout 11): a reader's cache words for entries 8b .. 8b+7 share one
# 64-byte line that no other process writes (each lookup stores its reader's word: no false
# sharing), and the lines of block b of all readers are contiguous, so 64 readers share a page.
CACHE_LINE_WORDS = 8
PINS_PAGE = 4096  # the pins section, and so its cache words, start on a page boundary


class CacheBit(IntEnum):
    """The low bits of a cache word. The cached generation pins only while one of them is set."""
    BUSY = 1         # a lookup of this process is between its GENERATION re-check and its end
    USERS = 2        # objects other than the cache (contexts, views, batches) may refer to it


CACHE_SHIFT = 2      # cache word >> CACHE_SHIFT is the generation


class TagCol(IntEnum):
    """Columns of a record tag: what the coordinator published in allocation record r.

    Valid only while records[r] is live with the same SERIAL; nobody clears a stale tag."""
    DIMENSION_ID = 0
    GENERATION = 1
    SERIAL = 2          # records[r, R.SERIAL] when tagged
    SUPERSEDED_NS = 3   # time.time_ns() when a newer generation replaced it; 0 = current
    SUPERSEDED_EPOCH = 4  # W.PIN_EPOCH after that publication


TAG_COLS = 8  # 5 used, 3 spare: a 64-byte row


class FileCol(IntEnum):
    """Columns of a file row: one region file the coordinator serves by mapping it.

    Row f is pool number ``pool_count + f`` in a layer index's rows and ``pools`` bits, so a
    generation's layers live in a pool segment or in such a file with no other change to the
    read path. Written once by the coordinator, STATE last, before any index names the pool,
    and never changed or cleared while the instance lives: a reader may map a row once and keep
    the mapping. The file is ``<runtime dir>/regions/<DIGEST0 DIGEST1 as 32 hex digits>.region``
    and a reader maps it only if it is still exactly this inode (DEV, INO, SIZE), a regular file of
    its own uid with no write bit for anyone (coordinator/region_store.py states why that is safe).
    """
    STATE = 0        # 0 = unused; 1 = set (written last)
    DEV = 1          # st_dev of the file
    INO = 2          # st_ino
    SIZE = 3         # st_size: the region's exact length
    DIGEST0 = 4      # the file's name: its first 8 bytes (big-endian) of the 16-byte store digest
    DIGEST1 = 5      # the last 8 bytes


FILE_COLS = 8  # 6 used, 2 spare: a 64-byte row
FILE_SET = 1
# A layer index's ``pools`` word has one bit per pool number, so pool rows and file rows share
# numbers 0..63 (the default pools use 9: 3 configured, 6 growth rows; 55 files are left).
MAX_POOL_NUMBERS = 64

# The short names the rest of the code and docs/shm-layout.md grew up with.
W, P, R, D, S, RD, PN, RT, F = ControlWord, PoolCol, RecordCol, DirCol, DirSlotCol, ReaderCol, PinCol, TagCol, FileCol


def cache_blocks(entries: int) -> int:
    """Lines of cache words one reader needs for ``entries`` directory entries."""
    return -(-entries // CACHE_LINE_WORDS)


def cache_word(layout: "Layout", reader: int, entry: int) -> int:
    """Index in ``Control.caches_mv`` (int64 words) of ``reader``'s cache word for ``entry``."""
    block, k = divmod(entry, CACHE_LINE_WORDS)
    return (block * layout.max_readers + reader) * CACHE_LINE_WORDS + k


def _caches_bytes(max_dimensions: int, max_readers: int) -> int:
    return cache_blocks(max_dimensions) * max_readers * CACHE_LINE_WORDS * 8


def _pins_bytes(max_dimensions: int, max_readers: int) -> int:
    """The pins section: the cache words, then the pin words (entry-major, PIN_COLS each)."""
    return _caches_bytes(max_dimensions, max_readers) + max_dimensions * max_readers * PIN_COLS * 8


def align_section(n: int) -> int:
    """``n`` rounded up to the next section boundary (ALIGN bytes), in this and the jobs segment."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


# Slots: every reader process holds one, and its __dict__ was ~0.6 kB of the reader's private
# memory (docs/performance.md, issue 22).
@dataclass(frozen=True, slots=True)
class Layout:
    """Offsets and sizes of every section for one configuration."""
    pool_count: int
    max_records: int
    max_dimensions: int
    max_readers: int
    words_offset: int
    pools_offset: int
    records_offset: int
    bitmaps_offset: int
    bitmap_offsets: tuple[int, ...]
    bitmap_sizes: tuple[int, ...]
    backed_offsets: tuple[int, ...]
    directory_offset: int
    readers_offset: int
    pins_offset: int
    tags_offset: int
    max_files: int
    files_offset: int
    size: int

    @classmethod
    def compute(cls, block_counts: list[int], *, max_records: int, max_dimensions: int,
                max_readers: int) -> "Layout":
        off = HEADER_SIZE
        words = off
        off = align_section(off + WORDS * 8)
        pools = off
        off = align_section(off + len(block_counts) * POOL_COLS * 8)
        records = off
        off = align_section(off + max_records * RECORD_COLS * 8)
        bitmaps = off
        bm_offsets, bm_sizes = [], []
        for count in block_counts:
            nbytes = (count + 7) // 8
            bm_offsets.append(off)
            bm_sizes.append(nbytes)
            off = align_section(off + nbytes)
        backed = []
        for nbytes in bm_sizes:
            backed.append(off)
            off = align_section(off + nbytes)
        directory = off
        off = align_section(off + max_dimensions * DIR_COLS * 8)
        readers = off
        off = align_section(off + max_readers * READER_COLS * 8)
        # On a page boundary: the cache words of 64 readers then fill whole pages (off a
        # boundary, some readers would share a page with fewer others).
        pins = off = (off + PINS_PAGE - 1) // PINS_PAGE * PINS_PAGE
        off = align_section(off + _pins_bytes(max_dimensions, max_readers))
        tags = off
        off = align_section(off + max_records * TAG_COLS * 8)
        files = off
        max_files = max(0, MAX_POOL_NUMBERS - len(block_counts))
        off = align_section(off + max_files * FILE_COLS * 8)
        return cls(len(block_counts), max_records, max_dimensions, max_readers, words, pools,
                   records, bitmaps, tuple(bm_offsets), tuple(bm_sizes), tuple(backed), directory,
                   readers, pins, tags, max_files, files, off)


class Control:
    """numpy views of every section of a mapped control segment (no copies).

    Each view is made on first use and kept: a reader process uses the words, directory, readers
    and pins only, and a view it never makes costs it nothing (the views of every section, made
    at attach, were ~16 kB of each reader's private memory: docs/performance.md)."""

    def __init__(self, buf: Any, layout: Layout) -> None:
        self.layout = layout
        self._buf = buf

    def _arr(self, offset: int, shape: tuple[int, ...], dtype: Any = "<i8") -> np.ndarray:
        # Imported here, not at the top: `shmpool --help` and `shmpool cleanup` read this
        # module's constants (through limits) and never map a control segment.
        import numpy as np

        # frombuffer, not np.ndarray(buffer=...): only frombuffer keeps a buffer export of the
        # mmap, which is what makes the owner's close() defer the unmap while an array is out
        # (np.ndarray keeps a reference without an export: the mmap closed under its arrays, and a
        # context released after Coordinator.stop() wrote its pin words into unmapped memory,
        # SIGSEGV: tests/test_control_views_hold_mapping.py). The reshape's extra view, ~100 B
        # per section, is the price.
        count = int(np.prod(shape))
        return np.frombuffer(self._buf, dtype=dtype, count=count, offset=offset).reshape(shape)

    def _mv(self, offset: int, nbytes: int) -> memoryview:
        return memoryview(self._buf)[offset:offset + nbytes].cast("q")

    @functools.cached_property
    def words(self) -> np.ndarray:
        return self._arr(self.layout.words_offset, (WORDS,))

    @functools.cached_property
    def pools(self) -> np.ndarray:
        return self._arr(self.layout.pools_offset, (self.layout.pool_count, POOL_COLS))

    @functools.cached_property
    def records(self) -> np.ndarray:
        return self._arr(self.layout.records_offset, (self.layout.max_records, RECORD_COLS))

    @functools.cached_property
    def bitmaps(self) -> list[np.ndarray]:
        lay = self.layout
        return [self._arr(o, (n,), "u1") for o, n in zip(lay.bitmap_offsets, lay.bitmap_sizes)]

    @functools.cached_property
    def backed(self) -> list[np.ndarray]:
        lay = self.layout
        return [self._arr(o, (n,), "u1") for o, n in zip(lay.backed_offsets, lay.bitmap_sizes)]

    @functools.cached_property
    def directory(self) -> np.ndarray:
        return self._arr(self.layout.directory_offset, (self.layout.max_dimensions, DIR_COLS))

    @functools.cached_property
    def readers(self) -> np.ndarray:
        return self._arr(self.layout.readers_offset, (self.layout.max_readers, READER_COLS))

    @functools.cached_property
    def pins(self) -> np.ndarray:
        """``pins[reader, entry]``: the PIN_COLS pin words of one reader for one entry; stored
        entry-major after the cache words, so this is a strided view."""
        lay = self.layout
        offset = lay.pins_offset + _caches_bytes(lay.max_dimensions, lay.max_readers)
        stored = self._arr(offset, (lay.max_dimensions, lay.max_readers, PIN_COLS))
        view: np.ndarray = stored.transpose(1, 0, 2)
        return view

    @functools.cached_property
    def caches(self) -> np.ndarray:
        """``caches[reader, entry // 8, entry % 8]``: a reader's cache word for an entry (stored
        block-major, ``cache_word``, so this is a strided view).""" 
        lay = self.layout
        blocks = cache_blocks(lay.max_dimensions)
        stored = self._arr(lay.pins_offset, (blocks, lay.max_readers, CACHE_LINE_WORDS))
        view: np.ndarray = stored.transpose(1, 0, 2)
        return view

    @functools.cached_property
    def tags(self) -> np.ndarray:
        return self._arr(self.layout.tags_offset, (self.layout.max_records, TAG_COLS))

    @functools.cached_property
    def files(self) -> np.ndarray:
        return self._arr(self.layout.files_offset, (self.layout.max_files, FILE_COLS))

    # Plain memoryview casts read one int64 ~5x faster than numpy scalar indexing; the read
    # path (generation checks) uses these.
    @functools.cached_property
    def words_mv(self) -> memoryview:
        return self._mv(self.layout.words_offset, WORDS * 8)

    def readers_view(self) -> memoryview:
        """A new view of the reader rows, flat (row * READER_COLS + column), for the caller to
        drop (or release) when done: a reader process claims and updates its row through one, and
        so makes no numpy view at all (numpy's code paths alone were two pages of each reader's
        private memory), and keeps none (it needs one at attach and at each publication it
        honours; docs/performance.md, issue 22)."""
        return self._mv(self.layout.readers_offset, self.layout.max_readers * READER_COLS * 8)

    @functools.cached_property
    def directory_mv(self) -> memoryview:
        return self._mv(self.layout.directory_offset, self.layout.max_dimensions * DIR_COLS * 8)

    @functools.cached_property
    def caches_mv(self) -> memoryview:
        """The lookup's cache words are read and written through this one (``cache_word``)."""
        lay = self.layout
        return self._mv(lay.pins_offset, _caches_bytes(lay.max_dimensions, lay.max_readers))

    def release(self) -> None:
        """Drop every view so the underlying mmap can be closed."""
        made = self.__dict__
        for name in ("words_mv", "directory_mv", "caches_mv"):
            mv = made.get(name)
            if mv is not None:
                mv.release()
        # None, not empty arrays: a use after release must fail loudly, so the types are waived
        # here; set whether made or not, so that nothing is made from the closed mapping later.
        self.words = self.pools = self.records = self.directory = self.readers = self.pins = self.caches = None  # type: ignore[assignment]
        self.tags = self.files = None  # type: ignore[assignment]
        self.words_mv = self.directory_mv = self.caches_mv = None  # type: ignore[assignment]
        self.bitmaps = self.backed = []
        self._buf = None


def pack_header(layout: Layout, *, control_size: int, instance_token: int, created_ns: int,
                name: str, magic: bytes = MAGIC) -> bytes:
    return HEADER.pack(
        magic, LAYOUT_VERSION, HEADER.size, control_size, instance_token, created_ns,
        layout.pool_count, layout.max_records, layout.max_dimensions, layout.max_readers,
        layout.words_offset, layout.pools_offset, layout.records_offset, layout.bitmaps_offset,
        layout.directory_offset, layout.readers_offset, layout.pins_offset, name.encode(),
        layout.tags_offset, layout.backed_offsets[0], layout.max_files, 0, layout.files_offset,
    )
