"""Calls docs/usage.md says are refused at run time, type-checked: each must be a type error
too, so its ``type: ignore`` is used (mypy --strict reports an unused one). A stub wider than
what runs (a navigation path taking a dimension name, which raises InvalidId) fails scripts/lint.
Never run: nothing here needs an instance."""

from __future__ import annotations

import shmpool


def refused_calls(reader: shmpool.Reader, client: shmpool.Client) -> list[object]:
    snapshot = reader.snapshot()
    # "Elsewhere (navigation paths, Client.lookup, proto-dimensions) it is an InvalidId."
    return [
        snapshot.load_contexts([("spatial", 3)]),  # type: ignore[list-item]
        client.lookup("spatial", 3),  # type: ignore[arg-type]
        shmpool.NavigationPath([("spatial", 3)]),  # type: ignore[list-item]
    ]
