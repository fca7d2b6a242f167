"""``map`` and ``imap_unordered`` refuse an argument that is not iterable with a typed error naming it.

Found by probing every public call with bad inputs: all raised ShmPoolErrors naming the argument
except these, which raised a bare ``TypeError: 'int' object is not iterable`` from deep inside
(imap_unordered only at the first next()). Now InvalidArgumentType (a ShmPoolError and a
TypeError, so code written for concurrent.futures still catches it) names ``iterables[i]`` or
``iterable``, at the call, and nothing is submitted.
"""

from __future__ import annotations

from typing import Iterator

import pytest

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.errors import InvalidArgumentType, ShmPoolError


@pytest.fixture
def client(instance_name) -> Iterator[shmpool.Client]:
    with Coordinator(instance_name, workers=1) as coord:
        with shmpool.connect(coord.name) as c:
            yield c


@pytest.mark.parametrize("iterables,chunksize,named", [((5,), 1, "iterables[0]"), ((5,), 3, "iterables[0]"),
                                                       (([1], None), 1, "iterables[1]"),
                                                       (([1], 7), 2, "iterables[1]")])
def test_map_names_an_argument_that_is_not_iterable(client, iterables, chunksize, named):
    with pytest.raises(InvalidArgumentType) as refused:
        client.map(pow, *iterables, chunksize=chunksize)
    assert isinstance(refused.value, ShmPoolError) and isinstance(refused.value, TypeError)
    assert refused.value.argument == named and named in str(refused.value)
    assert list(client.map(pow, [2, 3], [2, 2], chunksize=chunksize)) == [4, 9]  # the client works on


def test_imap_unordered_refuses_a_non_iterable_at_the_call(client):
    with pytest.raises(InvalidArgumentType) as refused:
        client.imap_unordered(abs, None)
    assert refused.value.argument == "iterable"
    assert sorted(client.imap_unordered(abs, [-1, -2])) == [1, 2]
