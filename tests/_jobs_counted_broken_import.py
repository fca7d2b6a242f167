"""A job module that appends a line to $SHMPOOL_TEST_IMPORTS each time it runs, then raises:
tests/test_worker_job_module_import_errors.py counts how often a worker ran it."""

import os

with open(os.environ["SHMPOOL_TEST_IMPORTS"], "a") as f:
    f.write("imported\n")
raise RuntimeError("this module fails at import on purpose, after a side effect")


def never(x):  # pragma: no cover - the module never finishes importing
    return x
