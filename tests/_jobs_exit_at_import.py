"""A job module that calls sys.exit() while it is imported: a script run as a job module
without an ``if __name__ == "__main__":`` guard (tests/test_worker_job_module_import_errors.py)."""

import sys

sys.exit(3)


def never(x):  # pragma: no cover - the module never finishes importing
    return x
