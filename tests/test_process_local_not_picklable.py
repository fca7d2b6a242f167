"""Objects that hold this process's mappings of shared memory (a context, a batch, a reader, a
snapshot, a client) refuse pickle and copy with NotPicklable, a ShmPoolError and TypeError that
says what to send instead; they raised Python's bare "cannot pickle 'LoadedContext' object"
(noticed by the read path's review). A context's bytes and ids travel fine."""

from __future__ import annotations

import copy
import pickle
import secrets

import pytest

import shmpool
from conftest import TEST_PREFIX
from shmpool import NotPicklable, ShmPoolError
from shmpool.coordinator import Coordinator


@pytest.fixture(scope="module")
def instance():
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"
    with Coordinator(name, data_dir=shmpool.SAMPLE, workers=1):
        with shmpool.attach(name) as reader, shmpool.Client(name) as client:
            yield reader, client


def _objects(reader, client):
    ctx = reader.load_layer_context(1, reader.layer_ids(1)[0])
    batch = reader.load_contexts([(1, reader.layer_ids(1)[0])])
    snap = reader.snapshot()
    return {"context": ctx, "batch": batch, "reader": reader, "snapshot": snap, "client": client}


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_process_local_objects_refuse_pickle_and_copy_with_a_typed_error(instance, how):
    objects = _objects(*instance)
    try:
        for what, obj in objects.items():
            with pytest.raises(NotPicklable) as err:
                if how == "pickle":
                    pickle.dumps(obj)
                elif how == "copy":
                    copy.copy(obj)
                else:
                    copy.deepcopy(obj)
            assert isinstance(err.value, ShmPoolError) and isinstance(err.value, TypeError)
            assert "shared memory" in str(err.value), str(err.value)
    finally:
        objects["snapshot"].close()


def test_what_a_context_carries_pickles(instance):
    reader, _ = instance
    ctx = reader.load_layer_context(1, reader.layer_ids(1)[0])
    again = pickle.loads(pickle.dumps((ctx.dimension_id, ctx.layer_id, bytes(ctx.content))))
    assert again == (ctx.dimension_id, ctx.layer_id, bytes(ctx.content))
