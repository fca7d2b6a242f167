"""Objects over the control segment keep it mapped: dropping them after the instance is closed
never touches unmapped memory.

A context of the coordinator's own reader kept past ``Coordinator.stop()`` holds its generation,
whose release writes the reader row's pin words in the control segment. Those words are numpy
arrays over the mapping; if an array did not hold a buffer export of the mmap, stop() would
unmap the segment under it and the release would write into nothing: a SIGSEGV, seen when
``Control`` built its arrays with ``np.ndarray(buffer=mmap)`` (which keeps a reference to the
object but no export, so ``mmap.close()`` succeeds under it).
"""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap

import pytest

from shmpool.substrate.layout import Control, Layout

# The scenario runs in a child: a segfault must fail this test, not kill the pytest worker.
KEPT_PAST_STOP = textwrap.dedent("""
    import sys
    from shmpool.coordinator import Coordinator
    with Coordinator(sys.argv[1], workers=0) as coord:
        proto = coord.create_proto_dimension(1, "x")
        proto.add_layer(2, b"plain bytes")
        coord.crystallize(1)
        ctx = coord.reader().load_layer_context(1, 2)
        snap = coord.reader().snapshot()
        snap_ctx = snap.load_layer_context(1, 2)
    print("stopped", flush=True)
    del ctx, snap_ctx, snap
    import gc; gc.collect()
    print("dropped", flush=True)
""")


def test_a_context_kept_past_the_coordinators_stop_is_dropped_without_a_crash(instance_name):
    proc = subprocess.run([sys.executable, "-c", KEPT_PAST_STOP, instance_name], capture_output=True,
                          text=True, timeout=120)  # a deadline that only catches a hang
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: killed by that signal)\n{proc.stderr[-3000:]}"
    assert proc.stdout.split() == ["stopped", "dropped"]


@pytest.mark.parametrize("section", ["words", "pools", "records", "directory", "readers", "pins", "tags", "files"])
def test_each_control_array_alone_keeps_the_mapping(section):
    layout = Layout.compute([16, 16], max_records=32, max_dimensions=4, max_readers=4)
    mm = mmap.mmap(-1, layout.size)
    control = Control(mm, layout)
    array = getattr(control, section)
    control.release()  # the Control's own references gone: only the array is out
    with pytest.raises(BufferError):
        mm.close()  # unmapping now would leave the array dangling
    del array
    mm.close()
    assert mm.closed
