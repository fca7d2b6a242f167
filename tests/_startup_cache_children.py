"""Child-process entry point of tests/test_coordinator_startup_cache.py: a coordinator that starts
when told, reports what its start-up verified, and stops.

A module of its own rather than a function of the test module: a spawned child imports the module
of its target, and the test module brings pytest and the test's helpers (~0.1 s of CPU per child,
twelve children per run of the merge test).
"""

from __future__ import annotations

from typing import Any

from shmpool.coordinator import Coordinator


def start_and_stop(name: str, data: str, cache: str, go: Any, out: Any) -> None:
    """Wait for ``go``, start a coordinator on ``data`` with the validation cache ``cache``, put
    (name, files verified, files skipped) on ``out``, stop."""
    go.wait(30)
    with Coordinator(name, data_dir=data, workers=0, verify_cache=cache, mapped_regions=False) as coord:
        out.put((name, len(coord.load_report.verified), len(coord.load_report.skipped)))
