"""A test-only key hash that forces collisions, installed in every process that builds or reads.

``"AAPL#anything"`` hashes as ``"AAPL"`` does: the two keys share a key id, so a lookup of the
absent one probes straight to the present one's slot, and only the key text compare (in the
compiled core) can tell them apart. The hook is shmpool.substrate.ids._key_hash, the one hash
builders and lookups use.
"""

from __future__ import annotations

from typing import Any

from shmpool.substrate import ids

_REAL = ids._blake2b_key_hash


def colliding_hash(utf8: bytes) -> int:
    return _REAL(utf8.split(b"#", 1)[0])


def install() -> None:
    ids._key_hash = colliding_hash


def read_in_child(name: str, dimension: str, present: str, absent: str, results: Any) -> None:
    """A second process: the present key's text, and what the colliding absent key raises."""
    install()
    import shmpool

    with shmpool.attach(name) as reader:
        text = reader.get(dimension, present).text
        try:
            reader.get(dimension, absent)
            outcome = "found"
        except shmpool.LayerNotFound as exc:
            outcome = type(exc).__name__
        batch = reader.load_contexts([(reader.dimension_id(dimension), absent)], strict=False)
        results.put((text, outcome, len(batch), len(batch.missing)))
