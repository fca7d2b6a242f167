"""The core's DimTable: its index of small dimension ids never disagrees with its dict, so a
lookup never finds a DimView its mapping has dropped (close and fork clear it in place)."""

from __future__ import annotations

import pytest

from _small_coord import coord  # noqa: F401  (a fixture)
from shmpool import InvalidArgument
from shmpool._core._lookup import NOT_MAPPED, DimTable, DimView


def _view(dim: int) -> DimView:
    return DimView(dim, dim % 7, 2 * dim, 2 * dim + 1)


@pytest.mark.parametrize("dim", [0, 1, 255, 256, 2**40])  # by index, by index, last indexed, by hash, by hash
def test_a_dimension_is_found_by_either_path_until_cleared(dim):
    table = DimTable()
    assert table.get(dim) is None and dim not in table and len(table) == 0
    view = _view(dim)
    table[dim] = view
    assert table.get(dim) is view and table[dim] is view and dim in table and table.values() == [view]
    assert view.current is NOT_MAPPED and (view.entry, view.gen_pos, view.touch_pos) == (dim % 7, 2 * dim, 2 * dim + 1)
    replacement = _view(dim)
    table[dim] = replacement
    assert table.get(dim) is replacement and len(table) == 1
    table.clear()
    assert table.get(dim) is None and len(table) == 0 and table.items() == []


def test_only_int_ids_and_dim_views_go_in():
    table = DimTable()
    with pytest.raises(InvalidArgument):
        table[True] = _view(1)
    with pytest.raises(TypeError):
        table[1] = None
    assert len(table) == 0


def test_a_lookup_after_the_mapping_clears_its_views_maps_afresh(coord):  # noqa: F811
    import shmpool
    with shmpool.attach(coord.name) as reader:
        reader.load_layer_context(1, 1)
        old = reader._map.dims[1]
        reader._map.dims.clear()  # what close() and a forked child do, in place
        assert reader.load_layer_context(1, 1).generation == 1
        new = reader._map.dims[1]  # the lookup went through the mapping, not a stale index entry
        assert new is not old and new.current.generation == 1
        reader.load_contexts([(1, 1), (1, 1)])
        assert reader._map.dims[1] is new
