"""``close()`` ends a submit that is waiting for a slot with ClientClosed, and so detaches now.

Found by probing close() against a thread blocked in submit (every slot held by another client's
long jobs): close() waited its CLOSE_WAIT, logged "closed while its completion thread is busy",
and returned; the submitter went on waiting for a slot (for ever with no timeout) and, once one
freed, its submit *succeeded* on the closed client; until then the completion thread could not
detach (a submit was in flight), so the channel stayed claimed. docs/usage.md: close() detaches
now.

Now a slot wait looks at the client's close after every slice (0.1 s) and raises ClientClosed,
freeing anything it placed. Checked for submit, map (a batch) and call (its own channel), each
with and without a spilled array. Real coordinator, worker, board; another client holds both
slots with gated jobs until the end; deadlines only catch the hang.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import pytest

import _array_jobs as jobs
from _introspect import job_counts
from _waiting import wait_for
import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import ClientClosed

pytestmark = pytest.mark.usefixtures("user_jobs_importable")

LARGE = np.ones(2 ** 15)  # 256 KiB: spilled
WAYS: dict[str, Callable[[shmpool.Client], Any]] = {
    "submit": lambda c: c.submit(pow, 2, 2),
    "submit spilled": lambda c: c.submit(jobs.total, LARGE),
    "map": lambda c: list(c.map(pow, [2, 3], [2, 2])),
    "map spilled": lambda c: list(c.map(jobs.total, [LARGE, LARGE])),
    "call": lambda c: c.call(pow, 2, 2),
    "call spilled": lambda c: c.call(jobs.total, LARGE),
}


@pytest.mark.parametrize("how", list(WAYS))
def test_close_ends_a_submit_waiting_for_a_slot(instance_name, tmp_path, how):
    gate = tmp_path / "gate"
    with Coordinator(instance_name, workers=2, job_slots=2, job_modules=["_array_jobs"]) as coord:
        baseline = int(coord.stats()["live_allocations"])
        with shmpool.connect(coord.name) as other:
            held = [other.submit(jobs.wait_for_path, str(gate), limit=60.0) for _ in range(2)]
            wait_for(lambda: job_counts(coord)["running"] == 2, 30, "both slots held")
            client = shmpool.connect(coord.name)
            clients_before = job_counts(coord)["clients"]
            ended: list[BaseException] = []

            def waiting() -> None:
                try:
                    WAYS[how](client)
                except BaseException as exc:  # noqa: BLE001  # what ended it is the point
                    ended.append(exc)

            submitter = threading.Thread(target=waiting)
            submitter.start()
            try:
                wait_for(lambda: job_counts(coord)["running"] == 2 and submitter.is_alive(), 5, "the submit waiting")
                client.close()
                submitter.join(10)  # a hang bound: it ends within a slice of the close
                assert not submitter.is_alive(), "the submit still waits for a slot after close()"
                assert len(ended) == 1 and isinstance(ended[0], ClientClosed), ended
                # Detached: its channels went back to the board while the slots are still held.
                wait_for(lambda: job_counts(coord)["clients"] <= clients_before - 1, 10, "the channel released")
            finally:
                gate.touch()
                submitter.join(60)
            assert [f.result(60) for f in held] == [0.0, 0.0]
        wait_for(lambda: int(coord.stats()["live_allocations"]) == baseline, 30, "nothing left allocated")
