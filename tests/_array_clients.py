"""A client process that submits one job with an array argument, then waits to be killed.

The job (tests/_array_jobs.py ``wait_for_path``) runs until the file ``gate`` appears, then writes
its argument's sum to ``gate + ".out"``: the test decides when the job may read its argument,
and kills this client before, during or after its submit (``fault``: a shmpool/substrate/_faults.py
point at which the client SIGKILLs itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CHILD = """
import sys, time
import numpy as np
import shmpool, _array_jobs
name, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = shmpool.connect(name)
x = np.arange(n, dtype=np.float64)
future = client.submit(_array_jobs.wait_for_path, gate, x, gate + ".out")
print("submitted", flush=True)
time.sleep(600)
"""


def submitting_client(name: str, gate: Path, n: int, fault: str | None = None) -> subprocess.Popen[str]:
    """The client, submitting ``np.arange(n, dtype=float64)``; it prints "submitted" once it has."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    env.pop("SHMPOOL_FAULT", None)
    if fault:
        env["SHMPOOL_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-c", CHILD, name, str(gate), str(n)], env=env, text=True,
                            stdout=subprocess.PIPE)
