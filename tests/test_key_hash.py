"""The key id of a str layer key, computed by the compiled core, and lookups by key through it.

The core's BLAKE2b (shmpool/_core/key_hash.h) must give the same ids as hashlib's, which region
files written by earlier releases used: every id in every file depends on it. Lookups by a str
key hash it in C without making a LayerKey; these must find exactly what the LayerKey path finds,
for more distinct keys than ids keeps LayerKeys of, for non-ASCII keys, and miss for absent ones.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shmpool
from conftest import TEST_PREFIX
from shmpool._core._lookup import key_hash
from shmpool.coordinator import Coordinator
from shmpool.data.region_builder import RegionBuilder
from shmpool.errors import LayerNotFound
from shmpool.substrate import ids


def _hashlib_key_id(utf8: bytes) -> int:
    digest = hashlib.blake2b(utf8, digest_size=8, person=b"shmpool.key").digest()
    return (int.from_bytes(digest, "little") & ((1 << 62) - 1)) | (1 << 62)


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 63, 64, 127, 128, 129, 255, 256, 257, 1000, 4096])
def test_the_core_hash_is_hashlibs_on_every_block_boundary(length):
    for fill in (b"\x00", b"\xff", b"k"):
        data = (fill * length)[:length]
        assert key_hash(data) == _hashlib_key_id(data), (length, fill)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_the_core_hash_is_hashlibs_on_any_bytes(data):
    assert key_hash(data) == _hashlib_key_id(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_a_key_id_is_the_hash_of_its_utf8(key):
    utf8 = key.encode("utf-8", "surrogatepass")
    assert ids.key_id(key) == _hashlib_key_id(utf8)
    assert int(ids.LayerKey(key)) == ids.key_id(key)


KEYS = [f"ticker-{i:05d}" for i in range(2500)] + ["", "é", "日本語", "emoji 🙂", "a" * 300]


@pytest.fixture(scope="module")
def keyed_instance(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    b = RegionBuilder(7, "tickers")
    for key in KEYS:
        b.add_layer(key, f"value of {key}")
    b.add_layer(5, "an int id")
    b.write(folder / "tickers.region")
    name = f"{TEST_PREFIX}{secrets.token_hex(4)}"  # module-scoped, so not from the make_name fixture
    with Coordinator(name, data_dir=folder, workers=0) as coord:
        yield coord.name


def test_more_distinct_keys_than_the_layerkey_cache_all_find_their_own_layer(keyed_instance):
    assert len(KEYS) > ids._KEYS_MOST, "the test must pass the LayerKey cache's size"
    with shmpool.attach(keyed_instance) as reader:
        for _ in range(2):
            for key in KEYS:
                ctx = reader.load_layer_context(7, key)
                assert bytes(ctx.content) == f"value of {key}".encode(), key
                assert ctx.layer_id == ids.key_id(key)
        by_name = reader.load_layer_context("tickers", "日本語")
        assert bytes(by_name.content) == "value of 日本語".encode()
        assert bytes(reader.load_layer_context(7, 5).content) == b"an int id"


def test_absent_keys_and_lone_surrogates_are_layer_not_found(keyed_instance):
    with shmpool.attach(keyed_instance) as reader:
        for key in ("ticker-99999", "Ticker-00001", "ticker-00001 ", "\ud800", "a" * 299):
            with pytest.raises(LayerNotFound) as err:
                reader.load_layer_context(7, key)
            assert repr(key) in str(err.value) or key in str(err.value)


def test_the_str_path_and_the_layerkey_path_agree(keyed_instance):
    with shmpool.attach(keyed_instance) as reader:
        snap = reader.snapshot()  # snapshots take the LayerKey path
        for key in KEYS[::97] + KEYS[-5:]:
            assert bytes(reader.load_layer_context(7, key).content) == bytes(snap.load_layer_context(7, key).content)
            assert bytes(reader.load_layer_context(7, ids.LayerKey(key)).content) == f"value of {key}".encode()
