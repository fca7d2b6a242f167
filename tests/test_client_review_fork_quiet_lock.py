"""A child forked while the completion thread settles a future can still wait for its own futures.

Found by reading QuietFuture: every future makes its Condition under one module-level lock
(``client_link._MAKING``), which the completion thread also takes for each future it settles.
A fork at that moment copied the lock *held* into the child, where no thread would ever release
it: the child's first wait on a pending future of its own new Client (``result()``,
``add_done_callback``, ``concurrent.futures.wait``) hung for ever, whatever its timeout. The
brief ``with`` window is held open here by a thread of the parent that holds the lock across
the fork, which is what the completion thread does for a few instructions per job.

Now the lock is made afresh in a forked child (os.register_at_fork). Real coordinator, worker,
fork and board; the child is given CHILD_WAIT seconds, a bound that only catches the hang.
"""

from __future__ import annotations

import json
import multiprocessing as mp

import _review_fork_children as children
from shmpool.coordinator import Coordinator


def test_a_child_forked_mid_settle_waits_for_its_own_futures(instance_name, tmp_path):
    out = tmp_path / "report.json"
    with Coordinator(instance_name, workers=1) as coord:
        proc = mp.get_context("spawn").Process(target=children.fork_while_settling, args=(coord.name, str(out)))
        proc.start()
        proc.join(children.CHILD_WAIT + 60)
        assert proc.exitcode == 0, proc.exitcode
        report = json.loads(out.read_text())
    assert report == {"child_exit": 0, "parent_works": True}, report
