"""Tools built on the public API: the stress harness (``shmpool stress``) and the demo (``scripts/run``).

Nothing in the product imports this package; it may import anything in ``shmpool``.
"""
