"""Settling answers wakes the detach only when a detach waits: no Condition notify per job.

Found by the second review (a cost on the job path's hot path): 1cb66e6 counted the threads
reading popped answers (``_reading``) so that the detach waits for them, and every settled batch,
a lone job's answer included, then called ``notify_all()`` on that count's condition whether or
not anything waited (~0.4 us of the ~1.4 us the count added per batch, measured in-process on the
shared 2-core machine; a lone submit().result() costs the client ~30 us). Only the detach waits,
and it marks the owner CLOSED under the same lock first, so the notify is needed only then.
Real coordinator and worker; the count of notifies is what is asserted, not a time.
"""

from __future__ import annotations

import threading

import shmpool
from shmpool.coordinator import Coordinator


class _CountingCondition(threading.Condition):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.notified = 0

    def notify_all(self) -> None:
        self.notified += 1
        super().notify_all()


def test_settling_answers_of_an_open_client_notifies_nobody(instance_name):
    with Coordinator(instance_name, workers=1) as coord:
        with shmpool.connect(coord.name) as client:
            owner = client._owner
            counting = owner._read = _CountingCondition(owner._lock)  # type: ignore[arg-type]
            for n in range(20):
                assert client.submit(pow, 2, n).result(30) == 2 ** n
            assert list(client.map(abs, range(-30, 0), timeout=30)) == list(range(30, 0, -1))
            assert counting.notified == 0, f"{counting.notified} notifies for 21 settled batches or more"
