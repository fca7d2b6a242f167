"""The shapes a batch's path can take: a list or tuple of (int, int) tuples goes through the
core's own check (no NavigationPath made; a Dask task's path arrives as a list), anything else
through NavigationPath. Both must accept and refuse the same paths, in Reader.load_contexts and
Snapshot.load_contexts alike."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

import shmpool
from conftest import TEST_PREFIX
from shmpool.coordinator import Coordinator
from shmpool.data.context import NavigationPath
from shmpool.data.sample import build_sample
from shmpool.errors import InvalidArgumentType, InvalidId, LayerNotFound
from shmpool.substrate.names import list_objects

STEPS = [(1, 1), (2, 2), (3, 3), (1, 1)]


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    build_sample(folder)
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    coord = Coordinator(name, data_dir=folder, workers=0).start()
    attached = shmpool.attach(name)
    yield attached
    attached.close()
    coord.stop()
    assert list_objects(name) == ([], [])


def _read(batch) -> list[tuple[int, int, bytes]]:
    return [(c.dimension_id, c.layer_id, bytes(c.content)) for c in batch]


@pytest.mark.parametrize("shape", ["list", "tuple", "navigation_path", "generator", "lists", "numpy"])
def test_every_accepted_path_shape_reads_the_same_layers_in_order(reader, shape):
    made = {"list": lambda: list(STEPS), "tuple": lambda: tuple(STEPS), "navigation_path": lambda: NavigationPath(STEPS),
            "generator": lambda: (s for s in STEPS), "lists": lambda: [list(s) for s in STEPS],
            "numpy": lambda: [(np.int64(d), np.uint16(l)) for d, l in STEPS]}[shape]
    expected = _read(reader.load_contexts(NavigationPath(STEPS)))
    assert [(d, l) for d, l, _ in expected] == STEPS
    got = reader.load_contexts(made())
    assert _read(got) == expected
    assert all(type(c.dimension_id) is int and type(c.layer_id) is int for c in got)
    with reader.snapshot() as snap:
        assert _read(snap.load_contexts(made())) == expected


@pytest.mark.parametrize("bad, error", [
    ([(1, 1), (True, 1)], InvalidId),          # a bool would find dimension 1
    ([(1, 1), (1, 2.0)], InvalidId),           # a float would find layer 2
    ([(1, 1), (1, 2, 3)], InvalidArgumentType),
    ([(1, 1), (1,)], InvalidArgumentType),
    ([(1, 1), 7], InvalidArgumentType),
    (((1, 1), ("1", 1)), InvalidId),         # a tuple of pairs takes the same checks
])
def test_a_path_with_a_bad_step_is_refused_before_anything_is_read(reader, bad, error):
    with pytest.raises(error):
        reader.load_contexts(bad)
    with pytest.raises(error):
        reader.load_contexts(bad, strict=False)  # a bad id is a caller's error, not a missing layer
    with reader.snapshot() as snap, pytest.raises(error):
        snap.load_contexts(bad)


def test_missing_steps_are_reported_by_position_for_a_plain_list(reader):
    got = reader.load_contexts([(1, 1), (1, 9999), (2, 2)], strict=False)
    assert [(c.dimension_id, c.layer_id) for c in got] == [(1, 1), (2, 2)]
    assert [(m.position, m.dimension_id, m.layer_id) for m in got.missing] == [(1, 1, 9999)]
    with pytest.raises(LayerNotFound):
        reader.load_contexts([(1, 1), (1, 9999)])
