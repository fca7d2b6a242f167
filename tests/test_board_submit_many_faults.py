"""A client killed inside a batch submit (map's BoardCore.submit_many) heals like one killed in a
single submit: at each kill point the batch passes through (a slot popped and not filled, filled
and not queued, queued with nobody woken, the wake-up flag set with no wake-up sent), the board
ends whole, every slot usable at once, the counters balanced.
"""

from __future__ import annotations

import pytest

import _map_children as children
from _board_checks import _coordinator, _dies_at_then_whole

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.mark.parametrize("fault", ["submit.popped", "submit.filled", "submit.queued", "wake.pending"])
def test_a_client_killed_inside_a_batch_submit_leaves_the_board_whole(instance_name, sample_dir, fault):
    with _coordinator(instance_name, sample_dir) as coord:
        _dies_at_then_whole(coord, instance_name, children.map_dies_at, fault, 40, join=60)
