"""A library starts empty: ``Coordinator(name)`` serves no data until the program publishes some,
the built-in sample is asked for by name, and a data folder without region files says how to make
them."""

from __future__ import annotations

import subprocess
import sys

import shmpool
from shmpool.coordinator import Coordinator
from shmpool.data.sample import CORE_DIMENSIONS


def test_a_coordinator_without_data_dir_serves_nothing_and_a_users_dimension_1_is_theirs(instance_name, warnings):
    with Coordinator(instance_name, workers=0) as coord:
        assert coord.load_report.loaded == {} and coord.stats()["dimensions"] == 0
        proto = coord.create_proto_dimension(1, "prices")
        proto.add_layer(1, "mine")
        assert coord.crystallize(1) == 1  # the first generation: nothing was replaced
        with shmpool.attach(instance_name) as reader:
            assert reader.dimensions() == {1: "prices"}
    assert warnings == []  # starting empty is what was asked for: nothing to warn about


def test_the_sample_is_asked_for_by_name(instance_name):
    with Coordinator(instance_name, data_dir=shmpool.SAMPLE, workers=0) as coord:
        assert sorted(coord.load_report.loaded) == sorted(CORE_DIMENSIONS)
    assert repr(shmpool.SAMPLE) == "shmpool.SAMPLE"


def test_sample_dir_builds_the_sample_once_and_returns_its_folder():
    folder = shmpool.sample_dir()
    assert len(sorted(folder.glob("*.region"))) == len(CORE_DIMENSIONS)
    assert shmpool.sample_dir() == folder


def test_a_data_dir_without_region_files_serves_nothing_with_a_warning_saying_how(instance_name, tmp_path,
                                                                                 warnings):
    with Coordinator(instance_name, data_dir=tmp_path, workers=0) as coord:
        assert coord.stats()["dimensions"] == 0
    assert len(warnings) == 1, warnings
    assert str(tmp_path) in warnings[0] and "RegionBuilder" in warnings[0] and "shmpool build" in warnings[0]


def test_serve_with_an_empty_data_dir_serves_nothing_and_says_how_to_build_region_files(instance_name, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "shmpool", "serve", instance_name, "--workers", "0",
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ready line
    proc.send_signal(2)
    _, err = proc.communicate(timeout=60)  # only catches a hang
    assert "0 dimensions" in line, (line, err)
    assert proc.returncode == 0 and "WARNING" in err and "shmpool build" in err, err
