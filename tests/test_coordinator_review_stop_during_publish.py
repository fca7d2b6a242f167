"""stop() from another thread while a publication is under way.

Before, stop() unmapped the instance under the publishing thread, which then failed untyped:
``ValueError: operation forbidden on released memoryview object`` and, from the allocator's
clean-up, ``TypeError: object of type 'NoneType' has no len()`` (5 of 6 runs of a 200 MiB
crystallize stopped part way). Now stop() waits for calls under way (coordinator/in_flight.py),
and a call that comes after stop() began raises CoordinatorStateError.

The publishing thread is held for 0.2 s inside Publisher.place (a window widener, not a speed
assert) so that stop() surely comes while it is inside. The waits only catch a hang.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shmpool.coordinator import Coordinator
from shmpool.errors import CoordinatorStateError

HANG = 60.0  # seconds: only a hang takes this long


@pytest.mark.parametrize("how", ["crystallize", "crystallize_many", "edit"])
def test_stop_waits_for_a_publication_under_way_in_another_thread(instance_name, how):
    coord = Coordinator(instance_name, workers=0).start()
    try:
        proto = coord.create_proto_dimension(1, "one")
        for lid in range(1, 9):
            proto.add_layer(lid, bytes([lid]) * 100_000)
        if how == "edit":
            coord.crystallize(1)
            coord.edit_dimension(1).add_layer(1, b"edited")
        publisher = coord._publisher
        assert publisher is not None
        inside = threading.Event()
        originals = {name: getattr(publisher, name) for name in ("place", "place_many", "publish_edit")}

        def held(name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                inside.set()
                time.sleep(0.2)  # stop() comes now
                return originals[name](*args, **kwargs)
            return call

        for name in originals:
            setattr(publisher, name, held(name))
        outcome: list[object] = []

        def publish() -> None:
            try:
                outcome.append(coord.crystallize_many([1]) if how == "crystallize_many" else coord.crystallize(1))
            except BaseException as exc:  # what the test judges
                outcome.append(exc)

        thread = threading.Thread(target=publish)
        thread.start()
        assert inside.wait(HANG)
        coord.stop()
        thread.join(HANG)
        assert not thread.is_alive()
        [result] = outcome
        assert not isinstance(result, BaseException), f"the publication failed: {result!r}"
        with pytest.raises(CoordinatorStateError):
            coord.crystallize(1)
    finally:
        coord.stop()
