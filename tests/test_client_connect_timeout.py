"""connect(timeout=t) is one timeout for the whole connect: the wait for the board's lock in the
Link and the claim of a channel shared it, where each got the whole of it (up to 2t; found by
the job path's review)."""

from __future__ import annotations

import secrets
import time

import shmpool
from conftest import TEST_PREFIX
from shmpool.coordinator import Coordinator
from shmpool.jobs import client as client_module
from shmpool.jobs.jobboard import JobBoard

LINK_TAKES = 0.3  # seconds the stand-in Link spends, as a Link waiting for the board's lock would


def test_the_claim_gets_what_the_link_left_of_the_timeout(monkeypatch):
    given: list[float | None] = []
    real_claim = JobBoard.claim_channel

    def claim(self, *args, timeout=None, **kwargs):
        given.append(timeout)
        return real_claim(self, *args, timeout=timeout, **kwargs)

    class SlowLink(client_module.Link):
        def __init__(self, *args, **kwargs):
            time.sleep(LINK_TAKES)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(JobBoard, "claim_channel", claim)
    monkeypatch.setattr(client_module, "Link", SlowLink)
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=shmpool.SAMPLE, workers=1):
        with shmpool.connect(name, timeout=5.0) as client:
            assert client.submit(max, [1, 2]).result(30) == 2
    (claim_timeout,) = given
    assert claim_timeout is not None and claim_timeout <= 5.0 - LINK_TAKES, claim_timeout
