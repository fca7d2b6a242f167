# cython: language_level=3
"""The read path in C: the probe of a generation's shared layer index, the slot decode, and the
objects a lookup returns.

(Skeleton: the limit row of the benchmarks first.)
"""

__all__ = ["PrebuiltSlice"]


cdef class PrebuiltSlice:
    """The benchmarks' limit row: a C method of the lookup's shape, ``get(dimension_id,
    layer_id)``, that returns a memoryview slice made beforehand. Nothing a lookup can do is
    cheaper than this call; scripts/bench_readers.py and bench_peers.py time it beside the lookup."""

    cdef object view

    def __init__(self, view):
        self.view = memoryview(view)[0:len(view)]

    def get(self, dimension_id, layer_id):
        return self.view
