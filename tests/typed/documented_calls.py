"""Documented calls, type-checked: scripts/lint runs mypy --strict on this file beside the
package, so a signature that refuses what docs/usage.md shows (a str layer key, a dimension
name, a numpy array layer) fails the type check. Never run: nothing here needs an instance."""

from __future__ import annotations

import numpy as np

import shmpool
from shmpool import NavigationPath
from shmpool.coordinator import Coordinator


def documented_calls(coord: Coordinator, reader: shmpool.Reader, client: shmpool.Client) -> list[object]:
    proto = coord.create_proto_dimension(40, "notes")
    proto.add_layer(1, b"bytes")
    proto.add_layer("apple", "a str key, text content")
    proto.add_layer(2, np.arange(4, dtype=np.float32))
    path = NavigationPath([(1, 3), (40, "apple")])
    snapshot = reader.snapshot()
    return [
        reader.load_layer_context(1, "apple"),
        reader.load_layer_context("spatial", 3),
        reader.find("spatial", "apple"),
        reader.get("spatial", 3),
        reader.load_contexts([(1, 3), (40, "apple")]),
        reader.load_contexts(path),
        snapshot.load_layer_context(1, "apple"),
        snapshot.load_layer_context("spatial", 3),
        snapshot.find("spatial", "apple"),
        snapshot.scan("spatial"),
        snapshot.load_contexts([(40, "apple")]),
        client.lookup(1, "apple"),
        client.load_contexts([(40, "apple")]),
    ]
