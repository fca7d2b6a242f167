"""The store folder of shmpool.dask on its own (no cluster): which files pruning keeps and removes."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("distributed")

from shmpool import _dask_host as host  # noqa: E402
from shmpool._dask_pin import pinned_generations  # noqa: E402


def _touch(path) -> None:
    path.write_bytes(b"region")


def test_pruning_keeps_the_newest_and_what_live_pins_hold_and_drops_expired_pins(tmp_path):
    for generation in (2, 3, 4, 5):
        _touch(host.store_file(tmp_path, 9, generation))
    _touch(host.store_file(tmp_path, 10, 2))  # another dimension: never touched by dimension 9's prune
    now = time.time()
    live, expired = tmp_path / f"{host.PIN_PREFIX}live.json", tmp_path / f"{host.PIN_PREFIX}old.json"
    live.write_text(json.dumps({"generations": {"9": 3}, "expires": now + 60}))
    expired.write_text(json.dumps({"generations": {"9": 2}, "expires": now - 1}))
    held = pinned_generations(tmp_path, now)
    assert held == {(9, 3)} and not expired.exists() and live.exists()
    removed = host.prune_store(tmp_path, 9, 5, keep=held)
    assert sorted(p.name for p in removed) == [host.store_file(tmp_path, 9, g).name for g in (2, 4)]
    assert host.store_entries(tmp_path) == {9: [(3, host.store_file(tmp_path, 9, 3)), (5, host.store_file(tmp_path, 9, 5))],
                                            10: [(2, host.store_file(tmp_path, 10, 2))]}
    assert host.store_generations(tmp_path)[9] == (5, host.store_file(tmp_path, 9, 5))


def test_pending_files_are_not_store_generations_and_discarding_them_spares_the_rest(tmp_path):
    _touch(host.store_file(tmp_path, 9, 4))
    pending = host.pending_file(tmp_path, 9, 5)
    _touch(pending)
    partial = tmp_path / f".{host.pending_file(tmp_path, 9, 6).name}.x1y2.tmp"
    _touch(partial)
    other = host.pending_file(tmp_path, 11, 2)
    _touch(other)
    assert host.store_generations(tmp_path) == {9: (4, host.store_file(tmp_path, 9, 4))}  # never served
    assert sorted(host.discard_pending(tmp_path, 9)) == sorted([pending, partial])
    assert other.exists() and host.store_file(tmp_path, 9, 4).exists()
