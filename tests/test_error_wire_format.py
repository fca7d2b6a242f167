"""One error wire format: every ShmPoolError crosses the job board and the Dask host daemon's
socket as the same type with the same attributes.

The job codec (worker -> client) and the Dask daemon (daemon -> Nanny/worker/client) used to
carry errors differently; the daemon read ``exc.fields``, which no error has, so a
GenerationNotNewer arrived as AttachError. Both now send ``codec.encode_error``'s payload.
"""

from __future__ import annotations

import inspect
import json
import typing
from enum import Enum

import pytest

import shmpool
from shmpool import _dask_host as host
from shmpool import errors
from shmpool.coordinator import Coordinator
from shmpool.errors import AllocationFailed, AllocationFailure, AttachError, ShmPoolError
from shmpool.jobs import codec

from _small_coord import POOLS, MiB

# A sample value per constructor keyword, chosen so that every type a field can hold (tuples,
# nested tuples, None, floats, bools, a str Enum) crosses the wire.
_SAMPLES: dict[str, object] = {
    "pools": ("4096 x 16", "65536 x 4"), "failed": (("seg", "EPERM"),),
    "available": (1, 2, 3), "sample_ids": (4, 5), "removed": ("a", "b"), "offset": 12, "value": (1.5, None),
    "coordinator_alive": False, "current_generation": None, "owner_pid": 4242, "handle": (1, 2, 3),
    "expected_uid": 1000, "mode": 0o644, "waited": 0.25, "timeout": 2.5,
}


def _sample(name: str, annotation: object) -> object:
    if annotation is AllocationFailure:
        return AllocationFailure.TOO_LARGE
    if name in _SAMPLES:
        return _SAMPLES[name]
    text = str(annotation)
    if "float" in text:
        return 1.25
    if "int" in text:
        return 7
    if "bool" in text:
        return True
    return f"<{name}>"


def _every_error() -> list[ShmPoolError]:
    """One instance of each ShmPoolError subclass of shmpool.errors, built from its own keywords."""
    made = []
    seen: set[type] = set()
    todo = [ShmPoolError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    for cls in sorted(seen, key=lambda c: c.__name__):
        if cls.__module__ != errors.__name__:
            continue
        hints = typing.get_type_hints(cls.__init__)
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        kwargs = {p.name: _sample(p.name, hints.get(p.name)) for p in params}
        made.append(cls(**kwargs))
    return made


ERRORS = _every_error()


def _same(original: ShmPoolError, got: BaseException) -> None:
    assert type(got) is type(original), f"{type(original).__name__} arrived as {type(got).__name__}: {got}"
    assert str(got) == str(original)
    for key, value in original._fields.items():
        assert getattr(got, key) == value, key
        assert type(getattr(got, key)) is type(value), key
        if isinstance(value, Enum):
            assert getattr(got, key) is value


def test_every_shmpool_error_is_covered():
    names = {type(e).__name__ for e in ERRORS}
    assert {"GenerationNotNewer", "AllocationFailed", "LimitExceeded", "SharedMemoryFull", "CleanupError"} <= names
    defined = [v for v in vars(errors).values()
               if isinstance(v, type) and issubclass(v, ShmPoolError) and v is not ShmPoolError]
    assert len(ERRORS) == len(defined)


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_crosses_the_job_codec_as_its_type_with_its_attributes(exc):
    _same(exc, codec.decode_error(codec.encode_error(exc), "job"))


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_crosses_the_dask_daemon_socket_as_its_type_with_its_attributes(exc):
    line = json.dumps(host.error_reply(exc))  # what the daemon writes on its socket
    _same(exc, host.rebuild_error("inst", json.loads(line)["error"]))


def test_a_daemon_error_of_a_type_the_caller_lacks_becomes_an_attach_error_naming_it():
    # A builtin arrives as itself, as it does from a job ...
    got = host.rebuild_error("inst", json.loads(json.dumps(host.error_reply(KeyError("dimension_id"))))["error"])
    assert type(got) is KeyError and got.args == ("dimension_id",)
    # ... a type of a module the caller never imported does not (nothing is imported for it).
    private = type("Private", (Exception,), {"__module__": "coordinator.not_imported_here"})
    got = host.rebuild_error("inst", json.loads(json.dumps(host.error_reply(private("x"))))["error"])
    assert isinstance(got, AttachError) and "Private: x" in str(got) and got.name == "inst"
    assert "Private" in str(got.__cause__)  # the daemon's traceback, chained


def test_a_job_result_larger_than_every_pool_fails_with_allocation_failed(instance_name, user_jobs_importable):
    with Coordinator(instance_name, pools=POOLS, memory_limit=64 * MiB, workers=1, job_modules=["_jobs"]) as coord:
        with shmpool.connect(coord.name) as client:
            with pytest.raises(AllocationFailed) as err:
                client.submit("_jobs:big", 20 * MiB).result(60)
            assert err.value.kind is AllocationFailure.TOO_LARGE
            assert err.value.nbytes > 20 * MiB
            # The worker lives on: a result that fits still arrives.
            assert len(client.submit("_jobs:big", 300_000).result(60)) == 300_000 // 256 * 256
