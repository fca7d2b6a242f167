"""A client killed inside a batch submit (map's BoardCore.submit_many) heals like one killed in a
single submit: at each kill point the batch passes through (a slot popped and not filled, filled
and not queued, queued with nobody woken, the wake-up flag set with no wake-up sent), the board
ends whole, every slot usable at once, the counters balanced.
"""

from __future__ import annotations

import signal

import pytest

import _map_children as children
from test_board_heal import _all_slots_at_once, _assert_whole, _coordinator, _spawn

pytestmark = pytest.mark.usefixtures("user_jobs_importable")


@pytest.mark.parametrize("fault", ["submit.popped", "submit.filled", "submit.queued", "wake.pending"])
def test_a_client_killed_inside_a_batch_submit_leaves_the_board_whole(instance_name, sample_dir, fault):
    with _coordinator(instance_name, sample_dir) as coord:
        victim = _spawn(children.map_dies_at, instance_name, fault, 40)
        victim.join(60)
        assert victim.exitcode == -signal.SIGKILL, f"the point {fault} was never reached"
        _all_slots_at_once(instance_name)
        _assert_whole(coord)
