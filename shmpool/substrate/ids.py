"""Dimension and layer ids: Python ints, or numpy integers (converted); a layer may also be named
by a string key; anything else is refused.

Ids are dictionary keys all the way down, and Python's ``True == 1`` and ``3.0 == 3`` hash alike,
so without a check ``load_layer_context(True, 17)`` silently returns dimension 1's layer. Callers
on a hot path test ``type(x) is int`` inline first (a few ns, the common case) and call
:func:`as_id` only when that fails.

**Keys.** A layer id may be given as a ``str`` key: it stands for its *key id*, a stable 63-bit
hash of the key's UTF-8 bytes (BLAKE2b, personalised) with bit 62 set, so key ids lie in
[2**62, 2**63) and never meet the small ids programs number layers with. :func:`as_id` turns a key
into a :class:`LayerKey`: an int (the key id) that carries the key's text, so every path that
carries layer ids carries keys unchanged (region files, the shared layer index's O(1) probe,
crystallize, edits, snapshots, batches, jobs) and still knows which text was asked for.

The hash only finds the slot; the text decides. A keyed layer stores its key's UTF-8 bytes next to
its keywords (region files and the shared index, docs/shm-layout.md), and a lookup by key returns
the layer only if the stored text equals the key, compared in the compiled core (one length test
and a memcmp, after the probe hit). So an absent key whose id collides with a present one is
LayerNotFound, never the other key's bytes. Two present keys of one dimension may still not
collide (refused at build, "duplicate layer id"; for a million keys the chance is ~1e-7). A
lookup by the bare int id finds a keyed layer as any other (its ``layer_id``).

A reader's lookup by a str key (``Reader.load_layer_context``) makes no LayerKey: the compiled
core hashes the str's cached UTF-8 itself (shmpool/_core/key_hash.h) and compares the text.
The other paths (snapshots, batches, jobs, Dask) take a LayerKey from :func:`as_id`, made once
while the key is among the last 1024 used. :data:`_key_hash` is the one hash every process uses
(builders and lookups alike, the core's); tests replace it to force collisions
(tests/_key_collide.py), and the core then takes the LayerKey path too, so the swapped hash
decides everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._core._lookup import key_hash
from ..errors import InvalidId

__all__ = ["as_id", "key_id", "KEY_BIT", "LayerKey"]

KEY_BIT = 1 << 62  # set in every key id, clear in ids below 2**62
_PERSON = b"shmpool.key"  # domain separation: a key id is not the plain BLAKE2b of the key (key_hash.h)


# BLAKE2b-64 personalised with _PERSON, bit 62 set: the compiled core's (key_hash.h), so that
# a reader's lookup by a str key hashes it in C without a call back into Python (the same bytes
# as hashlib.blake2b(utf8, digest_size=8, person=_PERSON): tests/test_key_hash.py).
_blake2b_key_hash = key_hash


# The key hash of every builder and lookup of this process, looked up at each call so that a test
# can swap it (tests/_key_collide.py forces collisions; the text compare must then decide).
_key_hash = _blake2b_key_hash


def _utf8(key: str) -> bytes:
    # surrogatepass: a key with a lone surrogate still has an id (as it always had); a builder
    # refuses to store such a key (a region's key text is strict UTF-8), so it is found nowhere.
    return key.encode("utf-8", "surrogatepass")


def key_id(key: str) -> int:
    """The layer id that string ``key`` stands for: stable across processes, releases and hosts."""
    return int(_key_hash(_utf8(key)))


class LayerKey(int):
    """A str key as the layer id it stands for (its key id), carrying its text.

    An int everywhere an id is expected (equal to and hashing as ``key_id(text)``); the lookup
    paths compare ``utf8`` with the key text stored with the layer. Pickles as its text.
    """

    text: str
    utf8: bytes

    def __new__(cls, key: str) -> "LayerKey":
        utf8 = key.encode("utf-8", "surrogatepass")  # _utf8, inline: this runs once per key lookup not cached
        self = int.__new__(cls, _key_hash(utf8))
        self.text = key
        self.utf8 = utf8
        return self

    def __reduce__(self) -> tuple[type["LayerKey"], tuple[str]]:
        return LayerKey, (self.text,)

    def __repr__(self) -> str:
        return repr(self.text)

    __str__ = __repr__


# A lookup by key pays for the hash (BLAKE2b, most of the cost of a key lookup) once per key text
# while the key stays among the last _KEYS_MOST used: a program reads the same keys again and again.
_KEYS_MOST = 1024
_keys: dict[str, LayerKey] = {}
_keys_hash = _key_hash  # the hash the cached keys were made with


def layer_key(key: str) -> LayerKey:
    """The LayerKey of ``key``, made once while it is among the keys used recently."""
    global _keys_hash
    found = _keys.get(key)
    if found is not None and _keys_hash is _key_hash:
        return found
    if _keys_hash is not _key_hash:  # the hash was swapped (a test): every cached id is stale
        _keys.clear()
        _keys_hash = _key_hash
    if len(_keys) >= _KEYS_MOST:
        _keys.clear()
    found = _keys[key] = LayerKey(key)
    return found


def as_id(value: Any, argument: str, where: str = "") -> int:
    """``value`` as a plain int if it is an int (not a bool) or a numpy integer, a LayerKey for a
    str layer key (kept as it is); else InvalidId."""
    if type(value) is int or type(value) is LayerKey:
        return value
    if type(value) is str and argument == "layer_id":  # a key: see the module docstring
        return layer_key(value)
    # bool is an int subclass (refused); IntEnum members are others (accepted). np.bool_ is not
    # an np.integer.
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, np.integer):
        return int(value)
    raise InvalidId(argument=argument, value=value, where=where)
