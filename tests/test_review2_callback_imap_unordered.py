"""A done-callback may run imap_unordered over its own client.

Found by the second review of the job path's fixes (a sibling of 6155abb): imap_unordered waits
for its next result on a queue its futures' callbacks fill, not through ``result()``, so in the
completion thread (a done-callback) nothing drained the ring while it waited, and the answers it
waited for were read by nobody: it hung for ever, and every later answer of the client with it.
Now in that thread it waits by draining the ring, as ``result()`` does. Real coordinator and
worker; the deadline only catches the hang.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import shmpool
from shmpool.coordinator import Coordinator


def test_a_done_callback_can_run_imap_unordered_over_its_client(instance_name):
    with Coordinator(instance_name, workers=1) as coord:
        client = shmpool.connect(coord.name)  # closed, not shut down: a hung owner must not hang the test
        try:
            seen: list[Any] = []
            finished = threading.Event()

            def unordered(done: Future) -> None:  # type: ignore[type-arg]
                try:
                    seen.extend(sorted(client.imap_unordered(abs, range(-5, 0), buffer=2)))
                except BaseException as exc:  # noqa: BLE001  # reported to the test thread
                    seen.append(exc)
                finally:
                    finished.set()

            first = client.submit(pow, 2, 2)
            first.add_done_callback(unordered)
            assert first.result(30) == 4
            assert finished.wait(10), "imap_unordered in a done-callback waited for answers nobody read"
            assert seen == [1, 2, 3, 4, 5], seen
            assert client.submit(pow, 2, 5).result(30) == 32  # the client works on
        finally:
            client.close()
