"""A job module that raises while it is imported (tests/test_worker_job_module_import_errors.py):
what a newcomer's module does when it starts a Coordinator, or anything else, at import."""

raise RuntimeError("this module fails at import on purpose")


def never(x):  # pragma: no cover - the module never finishes importing
    return x
