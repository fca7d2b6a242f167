"""Reader processes for tests/test_coordinator_mapped_regions.py: real processes over mapped regions.

``python tests/_mapped_children.py NAME hold``: attach, read every layer of every dimension and
print one JSON line {dimension: sha256 of its layers' bytes}; then, holding every context, wait
for a line on stdin and read every held context again (the same bytes, or a typed error), print
that, then look every layer up afresh and print that too.
``python tests/_mapped_children.py NAME once``: attach, read everything once, print the JSON:
{"digests": {...}} or {"error": class name, "message": ...} for a ShmPoolError.
"""

from __future__ import annotations

import hashlib
import json
import sys

import shmpool


def _digests(reader: shmpool.Reader, held: list[shmpool.LoadedContext] | None = None) -> dict[str, str]:
    out = {}
    for dim in sorted(reader.dimensions()):
        h = hashlib.sha256()
        for layer in reader.layer_ids(dim):
            ctx = reader.load_layer_context(dim, layer)
            h.update(bytes(ctx.content))
            if held is not None:
                held.append(ctx)
        out[str(dim)] = h.hexdigest()
    return out


def _held_digests(held: list[shmpool.LoadedContext]) -> dict[str, str]:
    out: dict[str, hashlib._Hash] = {}
    for ctx in held:
        out.setdefault(str(ctx.dimension_id), hashlib.sha256()).update(bytes(ctx.content))
    return {k: v.hexdigest() for k, v in out.items()}


def _guarded(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return {"digests": fn(*args)}
    except shmpool.ShmPoolError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def main() -> None:
    name, mode = sys.argv[1], sys.argv[2]
    with shmpool.attach(name) as reader:
        if mode == "once":
            print(json.dumps(_guarded(_digests, reader)), flush=True)
            return
        held: list[shmpool.LoadedContext] = []
        print(json.dumps(_guarded(_digests, reader, held)), flush=True)
        sys.stdin.readline()
        print(json.dumps(_guarded(_held_digests, held)), flush=True)
        print(json.dumps(_guarded(_digests, reader)), flush=True)


if __name__ == "__main__":
    main()
