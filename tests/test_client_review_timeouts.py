"""Every public call of the job path reads its ``timeout`` the same way, and refuses a bad one typed.

Found by probing each call with NaN, inf, 1e300, -inf, a str and a bool: NaN was refused with
InvalidArgument by submit, call and map, but a submit or map with a spilled array ran it as "no
wait" (its timeout clamped by max(0.0, nan - elapsed)), result(nan) of a pending future raised a
bare TimeoutError at once, and acall(timeout=nan) ran it as a wait; inf was "no limit" for
submit, call and map, but OverflowError from result() and from map's iterator once an array
spilled; a str was a bare TypeError. Now: NaN is InvalidArgument, a non-number (a bool too) is
InvalidArgumentType, both ShmPoolErrors naming ``timeout``; inf or anything past MAX_TIMEOUT is no
limit; a negative timeout is 0 (look once). Nothing is left queued by a refused call.

Real coordinator and worker; deadlines in result() only catch hangs.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import _array_jobs as jobs
from conftest import TEST_PREFIX, TESTS
import shmpool
from shmpool.substrate.names import list_objects
from shmpool.coordinator import Coordinator
from shmpool.errors import InvalidArgument, InvalidArgumentType, ShmPoolError

LARGE = np.ones(2 ** 15)  # 256 KiB: spills (above a quarter of the 64 KiB payload)
SUM = float(LARGE.sum())


@pytest.fixture(scope="module")
def client() -> Iterator[shmpool.Client]:
    """One coordinator and client for the module (the calls refused leave nothing behind)."""
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        with Coordinator(name, workers=1, job_modules=["_array_jobs"]) as coord:
            with shmpool.connect(coord.name) as c:
                yield c
    assert list_objects(name) == ([], [])


def _pending(c: shmpool.Client) -> shmpool.JobFuture:
    return c.submit(time.sleep, 0.3)


# Each public call with a timeout, run to its result: (name, call(client, timeout) -> result, expected).
CALLS: list[tuple[str, Callable[[shmpool.Client, Any], Any], Any]] = [
    ("submit", lambda c, t: c.submit(pow, 2, 3, timeout=t).result(30), 8),
    ("submit spilled", lambda c, t: c.submit(jobs.total, LARGE, timeout=t).result(30), SUM),
    ("result", lambda c, t: (_pending(c).result(t), 8)[1], 8),
    ("exception", lambda c, t: (_pending(c).exception(t), 8)[1], 8),
    ("call", lambda c, t: c.call(pow, 2, 3, timeout=t), 8),
    ("call spilled", lambda c, t: c.call(jobs.total, LARGE, timeout=t), SUM),
    ("map", lambda c, t: list(c.map(pow, [2, 3], [3, 2], timeout=t)), [8, 9]),
    ("map spilled", lambda c, t: list(c.map(jobs.total, [LARGE, LARGE], timeout=t)), [SUM, SUM]),
    ("map chunked", lambda c, t: list(c.map(abs, [-1, -2, -3], timeout=t, chunksize=2)), [1, 2, 3]),
    ("acall", lambda c, t: asyncio.run(c.acall(pow, 2, 3, timeout=t)), 8),
    ("acall spilled", lambda c, t: asyncio.run(c.acall(jobs.total, LARGE, timeout=t)), SUM),
    ("asubmit", lambda c, t: asyncio.run(_awaited(c.asubmit, pow, 2, 3, timeout=t)), 8),
]


async def _awaited(asubmit: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asubmit(*args, **kwargs)


@pytest.mark.parametrize("name,run,expected", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("bad,error", [(math.nan, InvalidArgument), ("5", InvalidArgumentType),
                                       (True, InvalidArgumentType), (b"1", InvalidArgumentType)],
                         ids=["nan", "str", "bool", "bytes"])
def test_a_bad_timeout_is_refused_typed_naming_it(client, name, run, expected, bad, error):
    with pytest.raises(error) as refused:
        run(client, bad)
    assert isinstance(refused.value, ShmPoolError)
    assert refused.value.argument == "timeout" and "timeout" in str(refused.value), refused.value
    assert client.submit(pow, 2, 3).result(30) == 8  # the client works on


@pytest.mark.parametrize("name,run,expected", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("endless", [math.inf, 1e300, np.float64(1e12)], ids=["inf", "1e300", "np1e12"])
def test_an_endless_timeout_is_no_limit(client, name, run, expected, endless):
    assert run(client, endless) == expected


@pytest.mark.parametrize("name,run,expected", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("negative", [-1.0, -math.inf], ids=["minus1", "minus_inf"])
def test_a_negative_timeout_looks_once_and_never_hangs(client, name, run, expected, negative):
    """A negative timeout is 0: the call succeeds if nothing had to wait, else TimeoutError."""
    try:
        assert run(client, negative) == expected
    except (FuturesTimeout, TimeoutError, asyncio.TimeoutError):
        pass
    assert client.submit(pow, 2, 3).result(30) == 8


def test_connect_refuses_a_nan_timeout(client):
    with pytest.raises(InvalidArgument) as refused:
        shmpool.connect(client.name, timeout=math.nan)
    assert refused.value.argument == "timeout"
