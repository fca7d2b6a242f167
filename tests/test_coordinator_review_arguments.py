"""Bad Coordinator constructor arguments are refused at once, typed and named.

Before, each failed later and untyped (at start, or at first use): ``max_dimensions=-3`` as a
struct.error, ``memory_limit="1G"`` / ``1.5e9`` and ``max_readers=2.5`` as TypeErrors from
below, ``pools=[(4096, 10)]`` as an AttributeError, ``job_slots=0`` / ``job_payload=0`` as
IndexErrors of the job board, ``max_pin_age=nan`` as a ValueError, ``data_dir=123`` /
``verify_cache=123`` as TypeErrors; ``max_readers=0`` and ``max_dimensions=0`` started a
coordinator no reader could attach to or nothing could be published in, and a negative
``drain_timeout`` or ``max_pin_age`` was taken as given.
"""

from __future__ import annotations

import os

import pytest

from shmpool import PoolSpec
from shmpool.coordinator import Coordinator
from shmpool.errors import InvalidArgument, InvalidArgumentType, ShmPoolError
from shmpool.substrate.trust import SHM_DIR

WRONG_KIND = [
    ("memory_limit", "1G"), ("memory_limit", 1.5e9), ("memory_limit", True),
    ("pools", [(4096, 10)]), ("pools", "4096x10"), ("thresholds", (750, 850, 950)),
    ("max_dimensions", True), ("max_dimensions", 2.0), ("max_readers", 2.5), ("sample_seed", "x"),
    ("job_slots", "8"), ("max_clients", None), ("job_payload", 1024.0),
    ("drain_timeout", "5"), ("max_pin_age", None), ("data_dir", 123), ("verify_cache", 123),
    ("verify_cache", None), ("capacity", {"evict": False}),
]
OUT_OF_RANGE = [
    ("memory_limit", 0), ("max_dimensions", -3), ("max_dimensions", 0), ("max_dimensions", 2**32),
    ("max_readers", 0), ("sample_seed", -1), ("job_slots", 0), ("max_clients", 0), ("job_payload", 0),
    ("job_payload", -5), ("drain_timeout", -1), ("drain_timeout", float("nan")), ("max_pin_age", -1),
    ("max_pin_age", 0), ("max_pin_age", float("nan")), ("max_pin_age", float("inf")),
]


def _names(instance_name: str) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if instance_name in n)


@pytest.mark.parametrize(("argument", "value"), WRONG_KIND, ids=[f"{a}={v!r}" for a, v in WRONG_KIND])
def test_an_argument_of_the_wrong_kind_is_invalid_argument_type(instance_name, argument, value):
    with pytest.raises(InvalidArgumentType) as err:
        Coordinator(instance_name, workers=0, **{argument: value})
    assert isinstance(err.value, (ShmPoolError, TypeError))
    assert err.value.argument == argument and argument in str(err.value)
    assert _names(instance_name) == []


@pytest.mark.parametrize(("argument", "value"), OUT_OF_RANGE, ids=[f"{a}={v!r}" for a, v in OUT_OF_RANGE])
def test_an_argument_out_of_range_is_invalid_argument(instance_name, argument, value):
    with pytest.raises(InvalidArgument) as err:
        Coordinator(instance_name, workers=0, **{argument: value})
    assert isinstance(err.value, (ShmPoolError, ValueError))
    assert err.value.argument == argument and argument in str(err.value)
    assert _names(instance_name) == []


def test_good_arguments_of_other_numeric_kinds_still_start(instance_name, tmp_path):
    import numpy as np

    with Coordinator(instance_name, workers=0, memory_limit=np.int64(16 << 20), max_dimensions=np.int32(8),
                     max_readers=4, pools=[PoolSpec(4096, 64)], drain_timeout=0, max_pin_age=0.5,
                     data_dir=str(tmp_path), verify_cache=tmp_path / "verified.json") as coord:
        proto = coord.create_proto_dimension(1, "one")
        proto.add_layer(1, b"x")
        assert coord.crystallize(1) == 1
        assert coord.memory_limit == 16 << 20 and type(coord.memory_limit) is int
