"""ClientClosed after shutdown() or close() says what happened, once: it read "client of
shmpool instance 'x' is closed (it is closed): ..." (found by the docs read-through)."""

from __future__ import annotations

import secrets

import pytest

import shmpool
from conftest import TEST_PREFIX
from shmpool import ClientClosed
from shmpool.coordinator import Coordinator


@pytest.mark.parametrize("end", ["shutdown", "close"])
def test_a_closed_client_says_which_call_closed_it(end):
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=shmpool.SAMPLE, workers=1):
        client = shmpool.Client(name)
        getattr(client, end)()
        with pytest.raises(ClientClosed) as err:
            client.submit(max, [1, 2])
        text = str(err.value)
        assert "is closed (it is closed)" not in text
        assert f"{end}()" in text, text
