"""Reader processes hammering one dimension while the test publishes generations of it: the one
harness of the torn-read tests (crystallize, edit, jumping generations)."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Callable


def hammer_while_publishing(hammer, name: str, dimension_id: int, publish: Callable[[], int], *,
                            readers: int = 3, seconds: float = 2.0, pause: float = 0.01,
                            timeout: float = 120.0) -> tuple[list[int], list[dict]]:
    """Start ``readers`` processes running ``hammer(name, dimension_id, timeout, started, stop,
    results)``, call ``publish()`` (returns the generation it published) for ``seconds`` once every
    reader is attached, then set ``stop``, and check what the readers saw: nothing torn, no held
    context changed, and more than three generations crossed. Returns (generations published, each
    reader's stats).

    Publishing starts only when every reader has set its ``started`` event: readers spawned
    late on a loaded machine would otherwise see a single generation and prove nothing. Readers
    read until ``stop`` (their ``timeout`` only ends a reader whose test never says stop): each
    used to read for ``seconds`` + 1 s of its own, spinning on after the last publication (a
    third of the scenario's CPU, three readers on two cores) for nothing more to check.
    """
    ctx = mp.get_context("spawn")
    results, started, stop = ctx.Queue(), [ctx.Event() for _ in range(readers)], ctx.Event()
    procs = [ctx.Process(target=hammer, args=(name, dimension_id, timeout, ev, stop, results)) for ev in started]
    for p in procs:
        p.start()
    try:
        for ev in started:
            assert ev.wait(timeout), "a reader process did not attach in time"
        published = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            published.append(publish())
            time.sleep(pause)
        stop.set()
        outcomes = [results.get(timeout=timeout) for _ in procs]
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert all(status == "ok" for status, _ in outcomes), outcomes
    stats = [payload for _, payload in outcomes]
    assert sum(s["torn"] for s in stats) == 0
    assert sum(s["kept_changed"] for s in stats) == 0
    assert max(len(s["generations"]) for s in stats) > 3, "readers should have crossed generations"
    return published, stats
