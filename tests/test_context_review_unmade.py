"""A LoadedContext that no lookup made (``LoadedContext.__new__(LoadedContext)``, as a copying
or serialising library may make one) raises typed errors, never reads memory it does not have.

Its fields are zero from the allocator: pool number 0 said "bytes in pool 0 of my generation",
and ``content``, ``text``, ``verify()`` and ``is_array`` read that pool's address through a
generation that was None: a SIGSEGV (found by a read-path review). Each case runs in a child
process, so that a regression is a failed test, not a dead pytest worker.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys
from shmpool import LoadedContext, ShmPoolError
ctx = LoadedContext.__new__(LoadedContext)
try:
    eval(sys.argv[1], {"ctx": ctx, "bytes": bytes, "len": len, "repr": repr})
    print("no error", flush=True)
except ShmPoolError as exc:
    print(type(exc).__name__, flush=True)
"""

USES = ["bytes(ctx.content)", "ctx.text", "ctx.verify()", "ctx.is_array", "ctx.array()", "len(ctx)",
        "ctx.generation", "ctx.frequency", "ctx.keywords", "ctx.is_text", "ctx.crc32", "ctx.dimension_name"]


@pytest.mark.parametrize("use", USES)
def test_a_context_no_lookup_made_raises_typed(use: str) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, use], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "InvalidArgument", (
        done.returncode, done.stdout[-500:], done.stderr[-2000:])


def test_a_context_made_over_bytes_of_ones_own_still_works() -> None:
    from shmpool import LoadedContext

    class Meta:
        generation, name = 3, "mine"

        def frequency(self, row: int) -> float:
            return 0.5

        def keywords(self, row: int) -> tuple[str, ...]:
            return ("a",)

        def is_text(self, row: int) -> bool:
            return True

        def crc32(self, row: int) -> int:
            import zlib
            return zlib.crc32(b"hello")

    ctx = LoadedContext(1, 2, memoryview(b"hello"), Meta(), 0)
    assert (ctx.text, len(ctx), ctx.generation, ctx.dimension_name, ctx.keywords) == ("hello", 5, 3, "mine", ("a",))
    assert ctx.verify() and bytes(ctx.content) == b"hello" and "generation=3" in repr(ctx)


def test_the_repr_of_an_unmade_context_says_so_and_never_raises():
    """repr() raised InvalidArgument on such an object (noticed by the second read): a debugger,
    a log line or a traceback's locals would fail on it."""
    from shmpool import LoadedContext

    ctx = LoadedContext.__new__(LoadedContext)
    assert "unmade" in repr(ctx)
