"""The `warnings` fixture: the messages shmpool logged at WARNING or above during the test, for
tests that check a warning was (or was not) given. A plugin of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loguru import logger


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    logger.enable("shmpool")
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)
    logger.disable("shmpool")
