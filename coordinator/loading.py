"""Loading region files into shared memory at start-up, one dimension at a time.

A bad file never stops the others: it is skipped with a WARNING that names it and says why.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from shmpool.substrate._log import logger

from shmpool.errors import RegionFormatError, ShmPoolError
from shmpool.substrate.instance import SharedInstance
from shmpool.data.region import HEADER_OFFSETS, Region
from shmpool.data.sample import sample_dir

from .file_copy import PoolWriter, RegionFile, check_by_reading
from .publisher import Publisher
from .region_store import RegionStore, StoredRegion, why_not_storable
from .verified import FileKey, VerifiedFiles

__all__ = ["LoadReport", "file_identity", "load_region_files", "place_file", "region_files", "sample_directory", "REGION_SUFFIX"]

REGION_SUFFIX = ".region"
_CRC_AT = HEADER_OFFSETS["meta_crc"]


@dataclass
class LoadReport:
    loaded: dict[int, str] = field(default_factory=dict)          # dimension id -> file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    bytes_loaded: int = 0
    verified: list[str] = field(default_factory=list)  # files whose every layer CRC and text was checked
    trusted: list[str] = field(default_factory=list)   # files the validation cache vouched for
    copy_seconds: float = 0.0    # sendfile into the pools (page reservation not included)
    verify_seconds: float = 0.0  # content checks (CRC32, UTF-8) of the copies
    mapped: list[str] = field(default_factory=list)   # files served from their copy in the region store
    stored: list[str] = field(default_factory=list)   # ... of which the copy was made (and checked) now
    store_seconds: float = 0.0   # making those copies: copy and full check
    # The store copies served, open and share-locked: the coordinator closes them when it stops.
    held: list[StoredRegion] = field(default_factory=list)


def region_files(folder: Path) -> list[Path]:
    """The region files (``*.region``) of ``folder`` in name order.

    None at all is a WARNING saying how to make some: a data folder was named, so serving
    nothing from it is surely not what was meant (a Coordinator without ``data_dir`` starts
    empty by design and never gets here).
    """
    paths = sorted(p for p in folder.iterdir() if p.suffix == REGION_SUFFIX)
    if not paths:
        logger.warning(
            "no region files (*{}) in {}: serving no data from it. Write some with shmpool.RegionBuilder "
            "(add_layer, then write(DIR / 'NAME.region')) or `shmpool build DIR --from FILE.jsonl`, or "
            "publish from the program (create_proto_dimension, crystallize); data_dir=shmpool.SAMPLE "
            "(shmpool serve --sample) serves the built-in sample", REGION_SUFFIX, folder)
    return paths


def load_region_files(publisher: Publisher, paths: list[Path], *, instance: SharedInstance,
                      cache: VerifiedFiles | None = None, store: RegionStore | None = None) -> LoadReport:
    """Publish every region file of ``paths`` in order; a bad one is skipped with a WARNING.

    With a ``store``, a file the store takes (ours, not writable by group or others: see
    coordinator/region_store.py) is served by mapping its verified copy there, made now if
    there is none: nothing is copied into the pools. Every other file goes the way below.

    Each file is copied into its blocks first and checked there, where readers will see it:
    the structure always, the content (every layer's CRC32, every text layer's UTF-8) unless
    ``cache`` holds a record of this very file verified before (coordinator/verified.py).
    Files verified in full are recorded in ``cache``, which is saved once at the end.
    """
    report = LoadReport()
    with PoolWriter(instance) as writer:
        for path in paths:
            try:
                with RegionFile.open(path) as src:
                    _place(publisher, writer, src, cache, None if store is None else (store, instance), report)
            except ShmPoolError as exc:
                report.skipped.append((str(path), str(exc)))
                logger.warning("skipping region file {}: {}", path, exc)
    if cache is not None:
        cache.save()
    if store is not None and store.added:
        store.prune()
    return report


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes may have: replaced (inode), rewritten (ctime)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def place_file(publisher: Publisher, instance: SharedInstance, path: str | os.PathLike[str], *,
               expect_dimension: int | None = None, generation: int | None = None,
               replaces: int | None = None, identity: tuple[int, ...] | None = None) -> int:
    """Publish region file ``path`` once (``Coordinator.publish_region_file``, a reload of an
    evicted dimension); returns the generation. ``generation`` and ``replaces`` are as
    Publisher.place takes them.

    As at start-up, the file is copied through its descriptor and checked in full (structure,
    every CRC32, every text's UTF-8) on the copy in shared memory, never mapped: a file
    truncated in place while mapped (``cp`` and ``>`` truncate before they write) made the
    coordinator die of SIGBUS reading it; copied, it is a RegionFormatError ("shrank"), and
    what readers see is exactly what was checked. Raises RegionFormatError (including a file
    of another dimension than ``expect_dimension``, or of another ``identity`` than
    :func:`file_identity` gave when it held the bytes wanted), and what Publisher.place raises.
    """
    with RegionFile.open(path) as src, PoolWriter(instance) as writer:
        if identity is not None and file_identity(src.stat) != identity:
            raise RegionFormatError(source=src.path, fault="changed since its dimension was evicted (replaced or "
                                                           "rewritten): it no longer holds the evicted bytes; "
                                                           "publish it again to serve it")
        dim = src.header.dimension_id
        if expect_dimension is not None and dim != expect_dimension:
            raise RegionFormatError(source=src.path, fault=f"holds dimension {dim}, not {expect_dimension}")

        def write(view: memoryview) -> None:
            writer.copy(src, view)
            with Region.from_buffer(view, source=src.path, verify_checksums=True):
                pass

        return publisher.place(src.nbytes, write, layer_count=src.header.layer_count, name=src.name(),
                               source=src.path, expect_dimension=dim, file=Path(src.path), generation=generation,
                               replaces=replaces)


def file_dimension(path: str | os.PathLike[str]) -> int:
    """The dimension id region file ``path`` announces (its header only; RegionFormatError)."""
    with RegionFile.open(path) as src:
        return int(src.header.dimension_id)


def _place(publisher: Publisher, writer: PoolWriter, src: RegionFile, cache: VerifiedFiles | None,
           store: tuple[RegionStore, SharedInstance] | None, report: LoadReport) -> None:
    dim = src.header.dimension_id
    if dim in report.loaded:
        check_by_reading(src.fd, src.stat, src.path)  # a corrupt file is reported as corrupt, not as a duplicate
        reason = f"dimension {dim} was already loaded from {report.loaded[dim]}"
        report.skipped.append((src.path, reason))
        logger.warning("skipping region file {}: {}", src.path, reason)
        return
    key = FileKey.of(src.stat, src.header.meta_crc)
    if store is not None and why_not_storable(src.stat) is None:
        region_store, inst = store
        if _place_mapped(publisher, src, key, region_store, inst, report):
            return
    where = os.path.abspath(src.path)
    started_ns = time.time_ns()  # before the copy: what the racy-timestamp rule compares with
    trusted = cache is not None and cache.is_verified(where, key)

    def write(view: memoryview) -> None:
        nonlocal trusted
        t0 = time.perf_counter()
        writer.copy(src, view)
        t1 = time.perf_counter()
        report.copy_seconds += t1 - t0
        # The record vouches for the file as it was; the copy must be of that file. The header
        # CRC in the copy is then proven (by place's structural check) to cover its index.
        if trusted and not (src.unchanged() and int.from_bytes(view[_CRC_AT:_CRC_AT + 4], "little") == key.meta_crc):
            logger.info("{} changed since it was opened: verifying it in full", src.path)
            trusted = False
        if not trusted:
            with Region.from_buffer(view, source=src.path, verify_checksums=True):
                pass
            report.verify_seconds += time.perf_counter() - t1

    publisher.place(src.nbytes, write, layer_count=src.header.layer_count, name=src.name(), source=src.path,
                    expect_dimension=dim, file=Path(src.path))
    report.loaded[dim] = src.path
    report.bytes_loaded += src.nbytes
    if trusted:
        report.trusted.append(src.path)
        return
    report.verified.append(src.path)
    if cache is not None and src.unchanged():
        cache.record(where, key, verified_ns=started_ns)


def _place_mapped(publisher: Publisher, src: RegionFile, key: FileKey, store: RegionStore, inst: SharedInstance,
                  report: LoadReport) -> bool:
    """Serve ``src`` from its copy in the store (made now if missing); False if it must be
    copied into the pools instead (too young to key, changed meanwhile, no file row left)."""
    stored = store.open(key)
    if stored is None:
        t0 = time.perf_counter()

        def check(view: memoryview) -> None:
            with Region.from_buffer(view, source=src.path, verify_checksums=True):
                pass

        stored = store.add(src, key, check)
        report.store_seconds += time.perf_counter() - t0
        if stored is None:
            return False
        report.stored.append(src.path)
    try:
        pool = inst.add_file(stored.fd, stored.stat, stored.digest)
    except BaseException:
        stored.close()
        raise
    if pool < 0:
        logger.info("no file row left for {}: copied into the pools", src.path)
        stored.close()
        return False
    try:
        publisher.place_mapped(pool, src.nbytes, layer_count=src.header.layer_count, name=src.name(),
                               source=str(stored.path), expect_dimension=src.header.dimension_id,
                               file=Path(src.path))
    except RegionFormatError as exc:
        # The copy was checked in full when it was made: it was changed since (by our own uid or
        # root). Never served; removed, so the next start makes it again; the source is copied.
        logger.warning("region store copy of {} is damaged ({}): removed; the file is copied into the pools",
                       src.path, exc)
        store.discard(stored)
        return False
    except BaseException:
        stored.close()
        raise
    report.held.append(stored)
    report.mapped.append(src.path)
    report.loaded[src.header.dimension_id] = src.path
    report.bytes_loaded += src.nbytes
    return True


def sample_directory(seed: int = 0) -> Path:
    """Region files of the built-in sample, built once per seed into the runtime folder."""
    return sample_dir(seed)
