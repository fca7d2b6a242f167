"""zstd storage of cold layers: the one place where a lookup returns a copy instead of a view.

A compressed layer is stored as ``uint64 raw_length`` (little-endian) followed by one zstd frame.
The raw length bounds the decompression buffer *before* anything is decompressed, so a corrupt or
hostile length can make us refuse the layer but never allocate more than MAX_INFLATED bytes.
zstandard is optional (the ``compress`` extra): without it, compressed layers cannot be read and
say so, and nothing is compressed.
"""

from __future__ import annotations

import struct
import threading

from ..errors import RegionFormatError

__all__ = ["MAX_INFLATED", "RAW_LENGTH", "available", "deflate", "inflate", "MIN_SAVING"]

RAW_LENGTH = struct.Struct("<Q")
MAX_INFLATED = 256 * 2**20  # largest layer we agree to decompress
MIN_SAVING = 0.10           # store compressed only if it saves at least this fraction
MIN_SIZE = 256              # smaller layers are never worth a frame header and a copy per lookup
LEVEL = 3                   # zstd's default: ~300 MB/s to compress here, decompression ~1 GB/s

try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover - the dev extra installs it
    _zstd = None  # type: ignore[assignment]  # every use checks available() / `_zstd is None` first

_local = threading.local()  # zstd contexts are not thread-safe; one pair per thread


def available() -> bool:
    return _zstd is not None


def _contexts() -> tuple[_zstd.ZstdCompressor, _zstd.ZstdDecompressor]:
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = (_zstd.ZstdCompressor(level=LEVEL), _zstd.ZstdDecompressor())
    return ctx


def deflate(data: bytes) -> bytes | None:
    """The stored form of ``data``, or None when compressing would not pay (or is unavailable)."""
    if _zstd is None or len(data) < MIN_SIZE or len(data) > MAX_INFLATED:
        return None
    frame = _contexts()[0].compress(data)
    stored = RAW_LENGTH.pack(len(data)) + frame
    return stored if len(stored) <= len(data) * (1 - MIN_SAVING) else None


def inflate(stored: bytes | memoryview, *, source: str, layer_id: int, offset: int = 0) -> bytes:
    """Decompress one stored layer; any fault is a RegionFormatError naming source and layer."""
    def fault(reason: str) -> RegionFormatError:
        return RegionFormatError(source=source, offset=offset, fault=f"layer {layer_id}: compressed content {reason}")

    if _zstd is None:
        raise fault("cannot be read: the zstandard package is not installed (pip install 'shmpool[compress]')")
    if len(stored) < RAW_LENGTH.size:
        raise fault(f"is {len(stored)} bytes, shorter than its {RAW_LENGTH.size}-byte length prefix")
    (raw_length,) = RAW_LENGTH.unpack_from(stored, 0)
    if raw_length > MAX_INFLATED:
        raise fault(f"claims {raw_length} bytes, more than the {MAX_INFLATED} allowed")
    try:
        data = _contexts()[1].decompress(memoryview(stored)[RAW_LENGTH.size:], max_output_size=raw_length)
    except _zstd.ZstdError as exc:
        raise fault(f"is not a valid zstd frame ({exc})") from None
    if len(data) != raw_length:
        raise fault(f"inflates to {len(data)} bytes, its prefix says {raw_length}")
    return data
