"""``shmpool cleanup NAME`` run by a user who may not remove the instance's names (another
user's): one error line and exit 1, and nothing on stdout that contradicts it. Before, it also
printed "nothing of NAME to clean up" on stdout (found by the docs read-through)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root (setuid)")


@needs_root
def test_cleanup_of_names_it_may_not_remove_says_only_why(instance_name, tmp_path):
    segment = f"/dev/shm/shmpool.{instance_name}.control"
    with open(segment, "wb") as f:  # root's, 0600, in sticky /dev/shm: nobody may not unlink it
        f.write(b"\0" * 64)
    os.chmod(segment, 0o600)
    # Not under tmp_path, which only root may enter: nobody's own folder, in /tmp.
    runtime = Path(tempfile.mkdtemp(prefix="shmpool-nobody-"))
    os.chown(runtime, NOBODY, NOBODY)
    out, err = tmp_path / "out", tmp_path / "err"
    try:
        pid = os.fork()
        if pid == 0:  # the child: the command's main() as user nobody, its streams into files
            try:
                sys.stdout = open(out, "w")  # noqa: SIM115 - opened as root; the child exits right after
                sys.stderr = open(err, "w")  # noqa: SIM115
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
                os.environ["SHMPOOL_RUNTIME_DIR"] = str(runtime)
                from shmpool.coordinator.cli import main

                status = main(["cleanup", instance_name])
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
            except BaseException:
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 1, err.read_text()
        assert os.path.exists(segment)  # not ours to remove
        assert out.read_text() == "", out.read_text()
        lines = [line for line in err.read_text().splitlines() if "| INFO" not in line]
        assert len(lines) == 1 and instance_name in lines[0], err.read_text()
    finally:
        os.unlink(segment)
        shutil.rmtree(runtime)
