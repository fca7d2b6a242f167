"""Proto-dimensions across stop() and a restart of the same Coordinator object.

stop() unmaps the instance an edit's base lives in, and nothing of the stopped run can be
published by the next one. Before, the protos outlived stop(): reading an edit's unchanged
layer raised a bare ValueError ("mmap closed or invalid", through ``coord.load_layer_context``
too), and after a restart the stale protos still held their ids, so create_proto_dimension and
edit_dimension of those ids were refused with InvalidLayer, and ``coord.load_layer_context``
of the republished dimension went to the stale edit.
"""

from __future__ import annotations

import pytest

from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import CoordinatorStateError

FILE_LAYER = b"from the file" * 100


def _coordinator(name: str, folder) -> Coordinator:
    builder = RegionBuilder(3, "three")
    builder.add_layer(1, FILE_LAYER)
    builder.add_layer(2, b"second")
    builder.write(folder / "three.region")
    return Coordinator(name, data_dir=folder, workers=0, mapped_regions=False)


def test_protos_of_a_stopped_coordinator_raise_coordinator_state_error(instance_name, tmp_path):
    coord = _coordinator(instance_name, tmp_path).start()
    try:
        edit = coord.edit_dimension(3)
        fresh = coord.create_proto_dimension(4, "four")
        fresh.add_layer(1, b"heap")
    finally:
        coord.stop()
    for call in (lambda: edit.load_layer_context(1), lambda: edit.add_layer(5, b"x"), lambda: edit.remove_layer(2),
                 lambda: fresh.load_layer_context(1), lambda: fresh.add_layer(2, b"y"),
                 lambda: coord.load_layer_context(3, 1), lambda: coord.load_layer_context(4, 1)):
        with pytest.raises(CoordinatorStateError) as err:
            call()
        assert err.value.name == instance_name and err.value.running is False


def test_a_restarted_coordinator_has_none_of_the_stopped_runs_protos(instance_name, tmp_path):
    coord = _coordinator(instance_name, tmp_path)
    with coord:
        coord.edit_dimension(3).add_layer(9, b"edited, never crystallized")
        coord.create_proto_dimension(4, "four").add_layer(1, b"heap")
    with coord:
        assert bytes(coord.load_layer_context(3, 1).content) == FILE_LAYER
        edit = coord.edit_dimension(3)  # refused with InvalidLayer before: the stale edit held the id
        edit.add_layer(9, b"this run's edit")
        fresh = coord.create_proto_dimension(4, "four again")
        fresh.add_layer(1, b"this run")
        assert coord.crystallize_many([3, 4]) == {3: 2, 4: 1}
        assert bytes(coord.load_layer_context(3, 9).content) == b"this run's edit"
        assert bytes(coord.load_layer_context(4, 1).content) == b"this run"
