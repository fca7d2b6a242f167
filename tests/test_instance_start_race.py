"""Two coordinators started under one name at the same instant: the loser's InstanceExists
names the winner's pid (issue 24: it was None in 20 of 20 races, the winner's control segment
not being attachable yet while it was still starting)."""

from __future__ import annotations

import multiprocessing as mp

import _start_race_children as children
from shmpool.data.region_builder import RegionBuilder

ROUNDS = 20


def test_the_loser_of_a_start_race_is_told_the_winner_pid(instance_name, tmp_path):
    seed = RegionBuilder(1, "seed")
    seed.add_layer(1, "hello")
    seed.write(tmp_path / "seed.region")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=children.start_in_rounds,
                         args=(instance_name, str(tmp_path), ROUNDS, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join(10)
    assert all(p.exitcode == 0 for p in procs)
    by_round: dict[int, dict[str, int | None]] = {}
    for r, outcome, pid in outcomes:
        assert outcome not in by_round.setdefault(r, {}), f"round {r}: two {outcome}"
        by_round[r][outcome] = pid
    for r, seen in sorted(by_round.items()):
        assert set(seen) == {"started", "exists"}, (r, seen)
        assert seen["exists"] == seen["started"], f"round {r}: the error named {seen['exists']}, " \
                                                  f"the winner was {seen['started']}"
