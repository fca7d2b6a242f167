"""What a lookup returns: LoadedContext, the NavigationPath it follows, the ContextCollection.

A LoadedContext's ``content`` is a read-only memoryview straight into shared memory. The view
keeps its generation pinned (see shmpool.data.reader): it stays valid and byte-identical for as long
as anything holds it, even after newer generations are published and after the Reader that made
it is closed.

LoadedContext and ContextCollection are extension types of the compiled core
(shmpool/_core/_lookup.pyx): a lookup builds them in C, and a ContextCollection made by
``load_contexts`` makes its contexts only when they are asked for. NavigationPath and
MissingStep are plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, Union, overload

from .._core import _lookup
from .._core._lookup import ContextCollection, LoadedContext
from ..errors import InvalidArgumentType
from ..substrate import ids
from ..substrate.ids import LayerKey, as_id
from . import arrays
from .compression import inflate

__all__ = ["LoadedContext", "NavigationPath", "ContextCollection", "MissingStep", "Step", "StepLike"]

Step = tuple[int, int]  # a step as a path holds it: the ids (a str key stands as its LayerKey)
StepLike = tuple[int, Union[int, str]]  # a step as a path takes it: the layer by id or str key


class NavigationPath(Sequence[Step]):
    """An ordered sequence of (dimension_id, layer_id) steps.

    Ids are ints (numpy integers are converted) and a layer may be named by its str key; anything
    else raises InvalidId, a TypeError.
    """

    __slots__ = ("_steps",)

    def __init__(self, steps: Iterable[StepLike] = ()) -> None:
        checked = []
        try:
            steps = iter(steps)
        except TypeError:
            raise InvalidArgumentType(argument="path", value=steps,
                                      reason="a navigation path must be an iterable of (dimension_id, layer_id) "
                                             "pairs") from None
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
    def of(cls, steps: Union["NavigationPath", Iterable[StepLike]]) -> "NavigationPath":
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


def check_keyword(keyword: object) -> str | None:
    """A scan's ``keyword``: a str, or None for every layer; InvalidArgumentType otherwise."""
    if keyword is not None and type(keyword) is not str:
        raise InvalidArgumentType(argument="keyword", value=keyword, reason="a keyword is a str (None: every layer)")
    return keyword


@dataclass(frozen=True)
class MissingStep:
    """A path step that could not be loaded, and why."""
    position: int
    dimension_id: int
    layer_id: int
    reason: str


# The core takes its Python collaborators once; LoadedContext and ContextCollection are its types.
_lookup.bind(as_id=as_id, navigation_path=NavigationPath, missing_step=MissingStep, inflate=inflate,
             arrays=arrays, layer_key=LayerKey, ids=ids)
