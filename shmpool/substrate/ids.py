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

:data:`_key_hash` is the one hash every process uses (builders and lookups alike); tests replace
it to force collisions (tests/_key_collide.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import InvalidId

__all__ = ["as_id", "key_id", "KEY_BIT", "LayerKey"]

KEY_BIT = 1 << 62  # set in every key id, clear in ids below 2**62
_PERSON = b"shmpool.key"  # domain separation: a key id is not the plain BLAKE2b of the key


def _blake2b_key_hash(utf8: bytes) -> int:
    digest = hashlib.blake2b(utf8, digest_size=8, person=_PERSON).digest()
    return (int.from_bytes(digest, "little") & (KEY_BIT - 1)) | KEY_BIT


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
        utf8 = _utf8(key)
        self = super().__new__(cls, _key_hash(utf8))
        self.text, self.utf8 = key, utf8
        return self

    def __reduce__(self) -> tuple[type["LayerKey"], tuple[str]]:
        return LayerKey, (self.text,)

    def __repr__(self) -> str:
        return repr(self.text)

    __str__ = __repr__


def as_id(value: Any, argument: str, where: str = "") -> int:
    """``value`` as a plain int if it is an int (not a bool) or a numpy integer, a LayerKey for a
    str layer key (kept as it is); else InvalidId."""
    if type(value) is int or type(value) is LayerKey:
        return value
    # bool is an int subclass (refused); IntEnum members are others (accepted). np.bool_ is not
    # an np.integer.
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, np.integer):
        return int(value)
    if argument == "layer_id" and type(value) is str:  # a key: see the module docstring
        return LayerKey(value)
    raise InvalidId(argument=argument, value=value, where=where)
