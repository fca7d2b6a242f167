"""Dimension and layer ids: Python ints, or numpy integers (converted); a layer may also be named
by a string key; anything else is refused.

Ids are dictionary keys all the way down, and Python's ``True == 1`` and ``3.0 == 3`` hash alike,
so without a check ``load_layer_context(True, 17)`` silently returns dimension 1's layer. Callers
on a hot path test ``type(x) is int`` inline first (a few ns, the common case) and call
:func:`as_id` only when that fails.

**Keys.** A layer id may be given as a ``str`` key: it stands for its *key id*, a stable 63-bit
hash of the key's UTF-8 bytes (BLAKE2b, personalised) with bit 62 set, so key ids lie in
[2**62, 2**63) and never meet the small ids programs number layers with. Every path that carries
layer ids therefore carries keys unchanged: region files, the shared layer index (O(1), the same
probe), crystallize, edits, snapshots, jobs. Rejected: a second index of key strings in shared
memory (a format change on the read path for a lookup that hashing gives for free). The cost: a
region cannot hold two keys whose ids collide (refused at build, "duplicate layer id"; for a
million keys the chance is ~1e-7), and a key that is absent but collides with a present one
would find that layer (~n / 2**62 per lookup of a missing key among n).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import InvalidId

__all__ = ["as_id", "key_id", "KEY_BIT"]

KEY_BIT = 1 << 62  # set in every key id, clear in ids below 2**62
_PERSON = b"shmpool.key"  # domain separation: a key id is not the plain BLAKE2b of the key


def key_id(key: str) -> int:
    """The layer id that string ``key`` stands for: stable across processes, releases and hosts."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, person=_PERSON).digest()
    return (int.from_bytes(digest, "little") & (KEY_BIT - 1)) | KEY_BIT


def as_id(value: Any, argument: str, where: str = "") -> int:
    """``value`` as a plain int if it is an int (not a bool) or a numpy integer; else InvalidId."""
    if type(value) is int:
        return value
    # bool is an int subclass (refused); IntEnum members are others (accepted). np.bool_ is not
    # an np.integer.
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, np.integer):
        return int(value)
    if argument == "layer_id" and type(value) is str:  # a key: see the module docstring
        return key_id(value)
    raise InvalidId(argument=argument, value=value, where=where)
