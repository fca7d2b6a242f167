"""The built-in sample: deterministic per seed and of the promised shape. (How quickly it builds is a
benchmark's question, not a test's: on a loaded machine any bound is either loose or flaky.)"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from shmpool.data.region import Region
from shmpool.data.sample import CORE_DIMENSIONS, build_sample, sample_builders


def digest(builders) -> list[str]:
    return [hashlib.sha256(b.to_bytes()).hexdigest() for b in builders]


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """The default sample written to disk once and opened with full checksum verification."""
    paths = build_sample(tmp_path_factory.mktemp("sample") / "not-yet-there")
    opened = [Region.open(p) for p in paths]
    yield paths, opened
    for region in opened:
        region.close()


def test_same_seed_gives_byte_identical_regions_and_another_seed_differs():
    first = digest(sample_builders(3, layers_per_dimension=20))
    assert first == digest(sample_builders(3, layers_per_dimension=20))
    other = digest(sample_builders(4, layers_per_dimension=20))
    assert all(a != b for a, b in zip(first, other))


def test_files_are_named_per_dimension_and_hold_the_14_core_dimensions(regions):
    paths, opened = regions
    assert len(CORE_DIMENSIONS) == 14 and sorted(CORE_DIMENSIONS) == list(range(1, 15))
    assert [p.name for p in paths] == [f"dim-{i:02d}-{n}.region" for i, n in CORE_DIMENSIONS.items()]
    assert {r.dimension_id: r.name for r in opened} == CORE_DIMENSIONS
    assert all(r.layer_ids() == list(range(1, 201)) for r in opened)


def test_layer_sizes_text_share_keywords_and_frequencies(regions):
    _, opened = regions
    lengths = np.concatenate([r.index["length"] for r in opened])
    assert lengths.min() >= 64 and lengths.max() <= 262144
    assert 0.7 < np.mean((lengths >= 1024) & (lengths < 8192)) < 0.9
    assert np.mean(lengths >= 65536) > 0.01 and np.mean(lengths < 1024) > 0.01
    text = [r.is_text(row) for r in opened for row in range(r.layer_count)]
    assert sum(text) / len(text) == pytest.approx(0.9, abs=0.02)
    frequencies = np.concatenate([r.index["frequency"] for r in opened])
    assert (frequencies >= 0).all() and (frequencies < 1).all()
    for r in opened:
        for row, layer_id in enumerate(r.layer_ids()):
            keywords = r.keywords(row)
            assert 1 <= len(keywords) <= 5
            if r.is_text(row):
                assert bytes(r.layer(layer_id)).decode().startswith(" ".join(keywords) + "\n")


def test_total_size_is_in_range(regions):
    paths, opened = regions
    total = sum(r.nbytes for r in opened)
    assert 20e6 < total < 40e6
    assert total == sum(p.stat().st_size for p in paths)
