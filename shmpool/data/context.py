"""What a lookup returns: LoadedContext, the NavigationPath it follows, the ContextCollection.

A LoadedContext's ``content`` is a read-only memoryview straight into shared memory. The view
keeps its generation pinned (see shmpool.data.reader): it stays valid and byte-identical for as long
as anything holds it, even after newer generations are published, but not after the Reader that
made it is closed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence, Union, overload

import numpy as np

from . import arrays
from ..errors import InvalidArgumentType
from ..substrate.ids import as_id

__all__ = ["LoadedContext", "NavigationPath", "ContextCollection", "MissingStep", "Step", "LayerMetadata"]

Step = tuple[int, int]


class LayerMetadata(Protocol):
    """What a LoadedContext reads from the object it was made from, by the layer's row there.

    A mapped Generation is the usual one (holding it also keeps the generation pinned); heap
    layers of a proto dimension, contexts copied out of shared memory (shmpool.dask) and region
    files of a dask store answer the same questions from their own storage.
    """

    @property
    def generation(self) -> int: ...

    @property
    def name(self) -> str: ...

    def frequency(self, row: int) -> float: ...

    def keywords(self, row: int) -> tuple[str, ...]: ...

    def is_text(self, row: int) -> bool: ...

    def crc32(self, row: int) -> int: ...


class LoadedContext:
    """One layer of one dimension, as loaded from shared memory (zero-copy)."""

    __slots__ = ("dimension_id", "layer_id", "content", "_gen", "_row")

    dimension_id: int
    layer_id: int
    content: memoryview
    _gen: LayerMetadata
    _row: int

    def __init__(self, dimension_id: int, layer_id: int, content: memoryview, gen: LayerMetadata, row: int) -> None:
        self.dimension_id = dimension_id
        self.layer_id = layer_id
        self.content = content
        self._gen = gen
        self._row = row

    @property
    def generation(self) -> int:
        return self._gen.generation

    @property
    def dimension_name(self) -> str:
        return self._gen.name

    @property
    def frequency(self) -> float:
        return self._gen.frequency(self._row)

    @property
    def keywords(self) -> tuple[str, ...]:
        return self._gen.keywords(self._row)

    @property
    def is_text(self) -> bool:
        return self._gen.is_text(self._row)

    @property
    def crc32(self) -> int:
        """The layer's CRC32 as recorded when it was written."""
        return self._gen.crc32(self._row)

    def verify(self) -> bool:
        """True if the bytes in memory still match the recorded CRC32 (reads every byte)."""
        return zlib.crc32(self.content) == self._gen.crc32(self._row)

    @property
    def text(self) -> str:
        """The content decoded as UTF-8 (a copy; decoded on each access)."""
        return str(self.content, "utf-8")

    @property
    def is_array(self) -> bool:
        """Whether the layer was published from a numpy array (see :meth:`array`)."""
        return arrays.is_array(self.content)

    def array(self) -> np.ndarray:
        """The numpy array the layer was published from: a read-only view into shared memory, no
        copy, with its dtype, shape and order. Same lifetime as ``content``. InvalidLayer if the
        layer was not published from an array."""
        return arrays.decode(self.content, dimension_id=self.dimension_id, layer_id=self.layer_id)

    def __len__(self) -> int:
        return len(self.content)

    def __repr__(self) -> str:
        return (f"LoadedContext(dimension_id={self.dimension_id}, layer_id={self.layer_id}, "
                f"generation={self.generation}, {len(self.content)} bytes)")


class NavigationPath(Sequence[Step]):
    """An ordered sequence of (dimension_id, layer_id) steps.

    Ids are ints (numpy integers are converted); anything else raises InvalidId, a TypeError.
    """

    __slots__ = ("_steps",)

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        checked = []
        for pos, step in enumerate(steps):
            try:
                dim, layer = step
            except (TypeError, ValueError):
                raise InvalidArgumentType(argument="step", value=step,
                                          reason="a navigation step must be a (dimension_id, layer_id) pair") from None
            # Exact type tests first: bools and floats would pass for ints as dict keys later on.
            if type(dim) is not int or type(layer) is not int:
                where = f"navigation step {pos} {step!r}"
                dim, layer = as_id(dim, "dimension_id", where), as_id(layer, "layer_id", where)
            checked.append((dim, layer))
        self._steps = tuple(checked)

    @classmethod
    def of(cls, steps: Union["NavigationPath", Iterable[Step]]) -> "NavigationPath":
        return steps if isinstance(steps, NavigationPath) else cls(steps)

    @overload
    def __getitem__(self, i: int) -> Step: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Step]: ...

    def __getitem__(self, i: int | slice) -> Step | Sequence[Step]:
        return self._steps[i]

    def __iter__(self) -> Iterator[Step]:
        return iter(self._steps)  # Sequence's default iterates through __getitem__: 3x slower

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"NavigationPath({list(self._steps)!r})"


@dataclass(frozen=True)
class MissingStep:
    """A path step that could not be loaded, and why."""
    position: int
    dimension_id: int
    layer_id: int
    reason: str


@dataclass
class ContextCollection:
    """The contexts loaded along a path, in path order, plus the steps that were missing."""
    contexts: list[LoadedContext] = field(default_factory=list)
    missing: list[MissingStep] = field(default_factory=list)

    def __iter__(self) -> Iterator[LoadedContext]:
        return iter(self.contexts)

    def __len__(self) -> int:
        return len(self.contexts)

    def __getitem__(self, i: int) -> LoadedContext:
        return self.contexts[i]

    @property
    def total_bytes(self) -> int:
        return sum(len(c.content) for c in self.contexts)

    def format_for_llm(self) -> str:
        """Plain text for an LLM prompt, one block per context in path order.

        The layout is stable (documented in docs/usage.md)::

            [1/2] dimension 3 "spatial" · layer 17 · frequency 0.420 · keywords: river, stone
            <the layer's text; binary layers appear as "<binary: N bytes>">

            [2/2] ...

        Missing steps, if any, follow as ``[missing] dimension D · layer L: reason`` lines.
        """
        total = len(self.contexts)
        blocks = []
        for i, ctx in enumerate(self.contexts, 1):
            keywords = ", ".join(ctx.keywords) or "-"
            head = (f"[{i}/{total}] dimension {ctx.dimension_id} \"{ctx.dimension_name}\" · "
                    f"layer {ctx.layer_id} · frequency {ctx.frequency:.3f} · keywords: {keywords}")
            body = ctx.text if ctx.is_text else f"<binary: {len(ctx.content)} bytes>"
            blocks.append(f"{head}\n{body}")
        for m in self.missing:
            blocks.append(f"[missing] dimension {m.dimension_id} · layer {m.layer_id}: {m.reason}")
        return "\n\n".join(blocks) + ("\n" if blocks else "")
