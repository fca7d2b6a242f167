"""``shmpool build``: region files from the built-in sample or from a JSON Lines file."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from shmpool.errors import ShmPoolError

if TYPE_CHECKING:  # imported where used: `shmpool --help` stays quick
    from shmpool.data.region_builder import RegionBuilder

__all__ = ["InputError", "load_jsonl", "cmd_build"]

_JSONL_FIELDS = {"dimension_id", "dimension_name", "layer_id", "text", "content_b64", "frequency", "keywords"}


class InputError(ShmPoolError, ValueError):
    """A line of a ``build --from`` file is unusable; names the file, the line and the fault."""

    def __init__(self, *, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}", path=path, line=line, reason=reason)


def load_jsonl(path: str | os.PathLike[str]) -> list[RegionBuilder]:
    """One RegionBuilder per dimension from a JSON Lines file, one layer per line.

    Raises InputError naming the line for anything unusable; blank lines are skipped.
    """
    from shmpool.data.region_builder import RegionBuilder

    builders: dict[int, RegionBuilder] = {}
    names: dict[int, str] = {}
    source = str(path)
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue

            def bad(reason: str) -> InputError:
                return InputError(path=source, line=lineno, reason=reason)

            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise bad(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
            if not isinstance(rec, dict):
                raise bad(f"expected a JSON object, got {type(rec).__name__}")
            unknown = sorted(set(rec) - _JSONL_FIELDS)
            if unknown:
                raise bad(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_JSONL_FIELDS))}")
            dim, layer = rec.get("dimension_id"), rec.get("layer_id")
            if isinstance(dim, bool) or not isinstance(dim, int):
                raise bad(f"dimension_id must be an integer, got {dim!r}")
            if isinstance(layer, bool) or not isinstance(layer, (int, str)):  # a str is a key (shmpool.key_id)
                raise bad(f"layer_id must be an integer or a string key, got {layer!r}")
            name = rec.get("dimension_name", names.get(dim))
            if not isinstance(name, str) or not name:
                raise bad(f"dimension_name must be a non-empty string (required on the first line of "
                          f"dimension {dim}), got {name!r}")
            if names.setdefault(dim, name) != name:
                raise bad(f"dimension {dim} was named {names[dim]!r} earlier, now {name!r}")
            if ("text" in rec) == ("content_b64" in rec):
                raise bad("give exactly one of text and content_b64")
            if "text" in rec:
                content = rec["text"]
                if not isinstance(content, str):
                    raise bad(f"text must be a string, got {type(content).__name__}")
            else:
                try:
                    content = base64.b64decode(rec["content_b64"], validate=True)
                except (TypeError, ValueError) as exc:
                    raise bad(f"content_b64 is not valid base64: {exc}") from None
            frequency = rec.get("frequency", 0.0)
            if isinstance(frequency, bool) or not isinstance(frequency, (int, float)):
                raise bad(f"frequency must be a number, got {frequency!r}")
            keywords = rec.get("keywords", [])
            if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
                raise bad(f"keywords must be a list of strings, got {keywords!r}")
            try:
                if dim not in builders:
                    builders[dim] = RegionBuilder(dim, name)
                builders[dim].add_layer(layer, content, frequency=float(frequency), keywords=keywords)
            except (ShmPoolError, ValueError, TypeError) as exc:
                raise bad(str(exc)) from None
    if not builders:
        raise InputError(path=source, line=0, reason="no layers in the file")
    return [builders[d] for d in sorted(builders)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "dimension"


def cmd_build(args: argparse.Namespace) -> int:
    from .loading import REGION_SUFFIX

    out = Path(args.directory)
    if args.source is None:
        from shmpool.data.sample import build_sample

        out.mkdir(parents=True, exist_ok=True)
        paths = build_sample(out, seed=args.seed)
    else:
        builders = load_jsonl(args.source)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for b in builders:
            path = out / f"dim{b.dimension_id:03d}-{_slug(b.name)}{REGION_SUFFIX}"
            b.write(path)
            paths.append(path)
    total = sum(Path(p).stat().st_size for p in paths)
    print(f"shmpool: wrote {len(paths)} region files ({total:,} bytes) to {out}")
    return 0
