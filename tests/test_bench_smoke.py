"""The allocation benchmark runs end to end, prints its JSON, and leaves nothing in /dev/shm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_alloc.py"
SIZES = ("100B", "4KiB", "64KiB", "1MiB")
SUMMARY = ("median_us", "p99_us", "p999_us", "min_us", "mean_us", "n")


def test_bench_alloc_quick_prints_complete_json_and_cleans_up(tmp_path):
    # cwd is a scratch folder so that a stray save could not land in the repository.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-save"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    doc = json.loads(proc.stdout)

    assert doc["benchmark"] == "bench_alloc"
    assert {"cpu", "cores", "python", "numpy", "platform", "date"} <= doc["machine"].keys()
    for section in ("round_trip", "round_trip_occupied"):
        for size in SIZES:
            result = doc[section][size]
            for op in ("allocate_free", "allocate"):
                assert set(SUMMARY) <= result[op].keys()
                assert result[op]["n"] == doc["config"]["iterations"]
            assert isinstance(result["target_met"], bool)
    assert 0.2 < doc["round_trip_occupied"]["occupancy"]["pools"][0]["utilization"] < 0.4
    contended = doc["contended"]
    assert len(contended["per_process"]) == contended["processes"] == 2
    assert contended["lock_recoveries"] == 0
    region = doc["region_open"]
    assert region["files"] == 14
    assert {"median_ms", "p99_ms"} <= region["all_files"].keys()
    assert region["all_files"]["n"] == doc["config"]["region_repeats"]
    assert isinstance(region["target_met"], bool)
    assert set(doc["target_met"]) == {"round_trip_p99_lt_100us", "round_trip_occupied_p99_lt_100us",
                                      "contended_p99_lt_100us", "region_open_14_lt_100ms"}
    assert doc["leftover_shm_objects"] == []
    assert not list(tmp_path.iterdir()), "--no-save wrote files"


# ----------------------------------------------------------------------------- bench_readers, bench_jobs

SCRIPTS = SCRIPT.parent
LATENCY = ("median_us", "p99_us", "p999_us", "min_us", "max_us", "mean_us", "n")


def _run_quick(script: str, *extra: str, cwd: Path, timeout: float = 120) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), "--quick", *extra], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout), proc.stdout


def _assert_latencies(summary: dict, n: int) -> None:
    assert set(LATENCY) <= summary.keys()
    assert summary["n"] == n
    assert 0 < summary["min_us"] <= summary["median_us"] <= summary["p99_us"] <= summary["max_us"]


def _assert_nothing_left(doc: dict, prefix: str) -> None:
    from shmpool.substrate.names import list_objects

    assert doc["instances"] and all(name.startswith(prefix) for name in doc["instances"])
    assert doc["leftovers_in_dev_shm"] == []
    # Checked here too, not only taken from the script's word for it.
    assert [obj for name in doc["instances"] for group in list_objects(name) for obj in group] == []


def test_bench_readers_quick_prints_complete_json_writes_out_file_and_cleans_up(tmp_path):
    out = tmp_path / "results" / "readers.json"
    doc, stdout = _run_quick("bench_readers.py", "--out", str(out), cwd=tmp_path)

    assert json.loads(out.read_text()) == doc == json.loads(stdout), "--out must hold what was printed"
    assert doc["benchmark"] == "bench_readers"
    assert {"cpu", "cores", "python", "numpy", "platform", "date"} <= doc["machine"].keys()
    config = doc["config"]
    _assert_latencies(doc["single_lookup"], config["lookups"])
    assert doc["single_lookup"]["amortized_ns"] > 0
    _assert_latencies(doc["batch_of_20"], config["batches"])
    for scan in ("scan_one_dimension_200_layers", "scan_and_read_200_layers"):
        _assert_latencies(doc[scan], config["scans"])
        assert doc[scan]["median_ms"] > 0
    assert doc["scan_one_dimension_200_layers"]["layers_per_scan"] == [200]
    assert doc["scan_and_read_200_layers"]["mean_bytes_read"] > 1_000_000

    startup = doc["startup_14_dimensions"]
    assert startup["files"] == 14 and startup["bytes"] > 30_000_000 and startup["repeats"] == config["repeats"]
    assert startup["median_ms"] > 0 and startup["stop_median_ms"] > 0
    assert all(v > 0 for v in startup["components"].values())

    crystallize = doc["crystallize"]["1MiB"]
    assert crystallize["region_bytes"] > 2**20 and crystallize["layers"] == 16
    assert crystallize["ms_per_MB"] > 0 and crystallize["first_ms_per_MB"] > 0
    assert crystallize["memcpy_warm_ms"] > 0 and crystallize["memcpy_fresh_pages_ms"] > 0

    concurrent = doc["concurrent_readers"]
    assert [r["processes"] for r in concurrent["rows"]] == config["reader_processes"]
    assert [[r["processes"], r["threads_per_process"]] for r in concurrent["threaded_rows"]] == config["threaded_rows"]
    for row in concurrent["rows"] + concurrent["threaded_rows"]:
        assert row["lookups_per_s"] > 0 and row["per_reader_per_s"] > 0 and row["lookups_per_cpu_second"] > 0
        assert isinstance(row["pass"], bool)
    # The threaded rows beside the limit function's (the interpreter's own cost of the threads).
    control = concurrent["interpreter_control"]["shapes"]
    assert list(control) == [f"{p * t}_threads_{p}x{t}" for p, t in config["threaded_rows"]]
    for shape in control.values():
        assert len(shape["rounds"]) == config["control_rounds"] >= 1
        assert shape["control_ratio_median"] > 0 and shape["ratio_over_control_median"] > 0
        assert all(r["limit_per_cpu_second_threads"] > 0 for r in shape["rounds"])

    for section in ("single_lookup", "batch_of_20", "scan_one_dimension_200_layers", "startup_14_dimensions"):
        assert isinstance(doc[section]["pass"], bool) and doc[section]["target_ms" if "target_ms" in doc[section]
                                                                         else "target_p99_us"] > 0
    assert len(doc["target_met"]) == 7 and all(isinstance(v, bool) for v in doc["target_met"].values())
    _assert_nothing_left(doc, "bench-rd-")
    assert [p.name for p in tmp_path.iterdir()] == ["results"], "only the --out file may be written"


def test_bench_jobs_quick_runs_every_system_prints_complete_json_and_cleans_up(tmp_path):
    run, md = tmp_path / "run", tmp_path / "md" / "table.md"
    run.mkdir()
    doc, _ = _run_quick("bench_jobs.py", "--no-save", "--workers", "1", "--markdown", str(md), cwd=run,
                        timeout=300)

    assert doc["benchmark"] == "bench_jobs"
    config = doc["config"]
    assert config["workers"] == 1 and config["thread_counts"] == [1, 8]
    for system in ("shmpool_pool", "process_pool_executor", "manager_dict", "direct_reader_no_job"):
        for threads, per_thread in zip(config["thread_counts"], config["round_trips_per_thread"]):
            row = doc["results"][system][str(threads)]
            _assert_latencies(row, threads * per_thread)
            assert row["threads"] == threads and row["jobs_per_s"] > 0 and row["littles_law_mean_us"] > 0
            assert row["client_cpu_us_per_job"] > 0
    assert doc["results"]["shmpool_pool"]["1"]["board_mean_us"] > 0
    if sys.platform.startswith("linux"):  # worker CPU is read from /proc
        assert len(doc["results"]["shmpool_pool"]["1"]["worker_cpu_us_per_job"]) == 1
    for ratio in doc["ratios"].values():
        assert all(v > 0 for v in ratio.values())
    assert len(doc["targets"]) == 3 and all(isinstance(v, bool) for v in doc["targets"].values())
    jobs = doc["coordinator_job_counts"]
    assert jobs["failed"] == 0 and jobs["completed"] == jobs["submitted"] > 0
    assert doc["layer_bytes"]["layers"] == 14 * 200
    _assert_nothing_left(doc, "bench-jobs-")
    assert not list(run.iterdir()), "--no-save wrote files"
    _assert_ipc_section(doc["ipc"], md.read_text(encoding="utf-8"))
    goals = doc["ipc_goals"]
    assert goals["call_p50_vs_pipe"]["value"] > 0 and goals["call_p50_vs_fastest_floor"]["value"] > 0
    assert all(g["met"] in (True, False, None) for g in goals.values())


# Peers of the ipc section that need the bench extra (module to import, system names); CI installs
# only .[dev], so there they must be recorded as skipped, and where installed they must run.
OPTIONAL_PEERS = {"zmq": ("ZeroMQ REQ/REP (ipc)", "ZeroMQ DEALER/ROUTER (ipc)"), "faster_fifo": ("faster-fifo",),
                  "mpire": ("mpire apply",),
                  "iceoryx2": ("iceoryx2 request-response (event wait)", "iceoryx2 request-response (busy-spin)")}
ALWAYS = ("multiprocessing.Pipe", "posix_ipc semaphores + shared buffer", "futex ping-pong (shmpool core)",
          "os.pipe one byte", "multiprocessing.Queue", "ProcessPoolExecutor", "shmpool Client.call",
          "shmpool Client.submit().result()", "shmpool Client.map")
NOT_PIPELINED = ("ZeroMQ REQ/REP (ipc)", "shmpool Client.call", "futex ping-pong (shmpool core)", "os.pipe one byte")


def _assert_ipc_section(ipc: dict, table: str) -> None:
    import importlib.util
    import inspect

    from shmpool.jobs.client import Client

    systems = ipc["systems"]
    assert ipc["config"]["rounds"] == 2 and len(ipc["order_per_round"]) == 2
    assert ipc["order_per_round"][0] != ipc["order_per_round"][1], "rounds must rotate the order"
    installed = {name for module, names in OPTIONAL_PEERS.items() for name in names
                 if importlib.util.find_spec(module) is not None}
    missing = {name for names in OPTIONAL_PEERS.values() for name in names} - installed
    assert set(ALWAYS) | installed | missing | {"shmpool low-latency client"} == set(systems)
    for name in missing:
        assert "not installed" in systems[name]["skipped"], name
    for name in (*ALWAYS, *installed):
        entry = systems[name]
        assert "skipped" not in entry and "failed" not in entry, (name, entry)
        assert entry["rounds"] == 2 and len(entry["per_round"]) == 2, name
        m = entry["median"]
        if name == "shmpool Client.map":
            assert m["map_items_per_s"] > 0
            if "chunksize" in inspect.signature(Client.map).parameters:
                assert entry["map_chunksize"] == ipc["config"]["map_chunksize"]
            else:
                assert any("not supported" in n for n in entry["notes"])
            continue
        assert 0 < m["p50_us"] <= m["p99_us"], name
        assert m["client_cpu_us_per_job"] > 0 and m["worker_cpu_us_per_job"] > 0, name
        if name in NOT_PIPELINED:
            assert entry["pipelined"].startswith("not measured"), name
        else:
            assert m["pipelined_req_per_s"] > 0 and entry["pipelined_workers"] in (1, 2), name
        assert entry["ratios_to_pipe"]["p50_vs_pipe"]["median"] > 0, name
    assert systems["multiprocessing.Pipe"]["ratios_to_pipe"]["p50_vs_pipe"]["per_round"] == [1.0, 1.0]
    assert systems["shmpool Client.submit().result()"]["pipelined_workers"] == 2
    assert "coordinator_cpu_us_per_job" in systems["shmpool Client.call"]["median"]
    low = systems["shmpool low-latency client"]
    assert "median" in low or low["skipped"].startswith("not available"), low

    assert "| system | round trip p50 µs | p99 µs |" in table
    table, _, goals = table.partition("Issue 25's goals")
    assert "| call_p50_vs_pipe |" in goals and "| map_chunksize16_items_per_s |" in goals
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| system")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(systems)


def test_ipc_rounds_records_a_system_that_fails_and_still_measures_the_others(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib
    import ipc_rounds

    section = ipc_rounds.run(tmp_path, rounds=2, n_lat=20, n_pipe=50, window=8, warmup=5,
                             systems=("multiprocessing.Pipe", "no such system", "shmpool Client.call"))

    systems = section["systems"]
    assert systems["no such system"]["skipped"].startswith("failed to start: KeyError"), systems["no such system"]
    for name in ("multiprocessing.Pipe", "shmpool Client.call"):
        assert systems[name]["rounds"] == 2 and systems[name]["median"]["p50_us"] > 0, systems[name]
    assert section["order_per_round"] == [["multiprocessing.Pipe", "shmpool Client.call"],
                                          ["shmpool Client.call", "multiprocessing.Pipe"]]
    assert benchlib.shm_leftovers() == []
    assert "PYTHONPATH" not in os.environ or str(SCRIPTS) not in os.environ["PYTHONPATH"].split(os.pathsep)
