"""What a reader process makes at attach and at its lookups (issue 22: a reader's heap).

A reader's private memory is the pages its objects and their temporaries touch, so the read path
makes only what it uses: no numpy view of any control section (numpy's code paths alone touched
two pages of its own .bss per reader), no regular expression, no pool segment that holds none of
the generations it maps, and a dimension table as long as the dimension ids it holds. Each is
checked in a fresh spawned interpreter (nothing made earlier by the test process hides it), by
what exists and what was called, never by a byte count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import shmpool
from shmpool._core._lookup import DimTable, DimView
from shmpool.coordinator import Coordinator

DEADLINE = 120.0  # seconds: only catches a hang

# numpy views of control sections (Control's cached properties); the memoryviews are not numpy.
NUMPY_SECTIONS = ("words", "pools", "records", "bitmaps", "backed", "directory", "readers", "pins", "tags", "files")

READ_PATH = textwrap.dedent("""
    import fnmatch, json, re, sys
    import numpy
    import shmpool, shmpool.data.reader, shmpool.data.snapshot, shmpool.substrate.instance

    calls = {}
    def count(owner, attr):
        real = getattr(owner, attr)
        def counted(*args, **kwargs):
            calls[attr] = calls.get(attr, 0) + 1
            return real(*args, **kwargs)
        setattr(owner, attr, counted)
    for attr in ("frombuffer", "flatnonzero", "asarray", "array", "nonzero"):
        count(numpy, attr)
    count(re, "_compile")  # every re.compile / re.match(str) / fnmatch goes through it
    count(fnmatch, "fnmatch")

    name, keys = sys.argv[1], json.loads(sys.argv[2])
    reader = shmpool.attach(name)
    for dim, layer in keys:
        bytes(reader.load_layer_context(dim, layer).content[:1])
    inst = reader.instance
    entries = reader._map.directory.entries()
    index_pools = sorted({reader._map.directory.read(e).pool for e in entries.values()})
    print(json.dumps({
        "calls": calls,
        "control_numpy_views": sorted(k for k in vars(inst.control) if k in %r),
        "pools_mapped": [i for i, seg in enumerate(inst.pool_segments) if seg is not None],
        "index_pools": index_pools,
        "files_mapped": sum(1 for f in inst._files if f is not None),
        "dimensions_viewed": len(reader._map.dims),
    }))
    reader.close()
""" % (NUMPY_SECTIONS,))


def test_attach_and_lookups_make_no_numpy_view_no_regex_and_map_only_the_index_pools(make_name, sample_dir):
    with Coordinator(make_name(), data_dir=sample_dir, workers=0) as coord:
        with shmpool.attach(coord.name) as reader:
            keys = [(dim, reader.layer_ids(dim)[0]) for dim in reader.dimensions()]
        out = subprocess.run([sys.executable, "-c", READ_PATH, coord.name, json.dumps(keys)],
                             capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["calls"] == {}, report  # no numpy call, no regular expression, no fnmatch
    assert report["control_numpy_views"] == [], report
    # Pool segments are mapped on first use: the ones holding the layer indexes, no other.
    assert report["pools_mapped"] == report["index_pools"], report
    assert report["dimensions_viewed"] == len(keys) and len(keys) > 1
    assert report["files_mapped"] <= len(keys)


def _view(dim: int) -> DimView:
    return DimView(dim, dim % 7, 2 * dim, 2 * dim + 1)


def test_the_dimension_table_holds_small_ids_by_index_and_others_by_hash_without_duplicates():
    table = DimTable()
    views = {dim: _view(dim) for dim in (3, 0, 300, 17, 2**40)}
    for dim, view in views.items():
        table[dim] = view
    assert len(table) == 5 and sorted(table) == sorted(views)
    assert dict(table.items()) == views and sorted(map(id, table.values())) == sorted(map(id, views.values()))
    # Small ids between and past the ones held are absent, whichever path asks.
    for absent in (1, 16, 18, 255, 256, -1):
        assert table.get(absent) is None and absent not in table
    replacement = _view(17)
    table[17] = replacement
    assert len(table) == 5 and table[17] is replacement and table.get(17) is replacement
    table.clear()
    assert len(table) == 0 and table.items() == [] and table.get(3) is None and table.get(300) is None
