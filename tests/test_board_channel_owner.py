"""JobBoard.release_channel releases only a channel the calling process claimed.

A child forked from a client inherits the board and the channel number; releasing it there would
hand the parent's live channel to the next claim_channel and split its results (issue 24).
"""

from __future__ import annotations

import os

from shmpool.errors import AttachError
from shmpool.jobs.jobboard import JobBoard
from shmpool.jobs.jobs_layout import CC


def test_a_forked_child_cannot_release_its_parents_channel(instance_name):
    board = JobBoard.create(instance_name, slots=4, channels=2, payload=1024)
    try:
        channel = board.claim_channel()
        slot, seq = board.submit(channel, b"request", timeout=1)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: try, report one byte, end without any cleanup of the parent's
            verdict = b"?"
            try:
                board.release_channel(channel)
                verdict = b"R"  # released: the defect
            except AttachError as exc:
                verdict = b"A" if str(os.getppid()) in str(exc) else b"a"
            finally:
                os.write(write, verdict)
                os._exit(0)
        os.close(write)
        verdict = os.read(read, 1)
        os.close(read)
        os.waitpid(child, 0)
        assert verdict == b"A", "the child released (R) or was refused without naming the owner (a)"
        assert int(board.v.channels[channel, CC.PID]) == os.getpid()
        assert board.slot_row(slot).seq == seq and board.counts()["queued"] == 1  # the request stays ours
        assert board.release_channel(channel) == []  # the owner may
        assert int(board.v.channels[channel, CC.PID]) == 0
    finally:
        board.unlink()
        board.close()
