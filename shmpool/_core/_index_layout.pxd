# The layer index's layout as the C read path sees it: the one place the core names it.
#
# shmpool/data/layer_index.py defines the same layout for Python (SLOT_WORDS, EMPTY, POOL_BITS,
# ROW_DTYPE) and region.py the flags and the keyword separator; docs/shm-layout.md ("Layer index")
# tabulates it. tests/test_lookup_layout.py checks that every constant here (exported by
# shmpool._core._lookup as LAYOUT) equals its Python twin, field by field.

cdef enum:
    HEADER_BYTES = 88   # layer_index.HEADER_SIZE: the dimension name follows it

    # A table slot: four int64 words. Slot of key k is k & (slots - 1), then linear probing for
    # at most the header's max_probe + 1 slots.
    SLOT_WORDS = 4
    SLOT_KEY = 0        # the layer id; EMPTY in a free slot
    SLOT_START = 1      # first byte of the stored content in its pool segment
    SLOT_END = 2        # one past its last byte
    SLOT_META = 3       # row << POOL_BITS | pool; ~that (negative) for a compressed layer
    EMPTY = -1          # key (and meta) of a free slot
    POOL_BITS = 16
    POOL_MASK = 0xFFFF

    # A row (layer_index.ROW_DTYPE): byte offsets of its fields, little-endian.
    ROW_BYTES = 72
    ROW_LAYER_ID = 0    # int64
    ROW_START = 8       # int64
    ROW_END = 16        # int64
    ROW_KW_START = 24   # int64
    ROW_KW_END = 32     # int64
    ROW_FREQUENCY = 40  # float64
    ROW_POOL = 48       # uint16
    ROW_FLAGS = 50      # uint16
    ROW_CRC32 = 52      # uint32
    ROW_KEY_START = 56  # int64: FLAG_KEYED, the key's UTF-8 text in pool ROW_POOL ...
    ROW_KEY_END = 64    # int64: ... one past its last byte

    # region.FLAG_TEXT, region.FLAG_ZSTD, region.FLAG_KEYED, region.KEYWORD_SEPARATOR
    FLAG_TEXT = 1
    FLAG_ZSTD = 2
    FLAG_KEYED = 4
    KEYWORD_SEPARATOR = 0x1F
