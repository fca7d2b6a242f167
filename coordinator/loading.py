"""Loading region files into shared memory at start-up, one dimension at a time.

A bad file never stops the others: it is skipped with a WARNING that names it and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from loguru import logger

from shmpool.errors import ShmPoolError
from shmpool.names import runtime_dir
from shmpool.region import Region

from .publisher import Publisher

__all__ = ["LoadReport", "load_region_files", "sample_directory", "REGION_SUFFIX"]

REGION_SUFFIX = ".region"


@dataclass
class LoadReport:
    loaded: dict[int, str] = field(default_factory=dict)          # dimension id -> file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    bytes_loaded: int = 0


def load_region_files(publisher: Publisher, paths: list[Path]) -> LoadReport:
    report = LoadReport()
    for path in paths:
        try:
            region = Region.open(path)
        except ShmPoolError as exc:
            report.skipped.append((str(path), str(exc)))
            logger.warning("skipping region file {}: {}", path, exc)
            continue
        try:
            _place(publisher, region, path, report)
        except ShmPoolError as exc:
            report.skipped.append((str(path), str(exc)))
            logger.warning("skipping region file {}: {}", path, exc)
        finally:
            region.close()
    return report


def _place(publisher: Publisher, region: Region, path: Path, report: LoadReport) -> None:
    dim = region.dimension_id
    if dim in report.loaded:
        reason = f"dimension {dim} was already loaded from {report.loaded[dim]}"
        report.skipped.append((str(path), reason))
        logger.warning("skipping region file {}: {}", path, reason)
        return

    def copy(view: memoryview) -> None:
        # Reads region.buffer at call time: no reference outlives this function, so
        # region.close() can unmap the file afterwards without a BufferError.
        view[:] = region.buffer

    publisher.place(region.nbytes, copy, layer_count=region.layer_count, name=region.name, source=str(path),
                    expect_dimension=dim, file=Path(path))
    report.loaded[dim] = str(path)
    report.bytes_loaded += region.nbytes


def sample_directory(seed: int = 0) -> Path:
    """Region files of the built-in sample, built once per seed into the runtime folder."""
    from shmpool.region import FORMAT_VERSION
    from shmpool.sample import build_sample

    target = runtime_dir() / f"sample-seed{seed}-v{FORMAT_VERSION}"
    done = target / ".complete"
    if done.exists():
        return target
    with FileLock(str(target) + ".lock"):
        if not done.exists():
            target.mkdir(exist_ok=True)
            build_sample(target, seed=seed)
            done.touch()
            logger.info("built the sample data set (seed {}) in {}", seed, target)
    return target
