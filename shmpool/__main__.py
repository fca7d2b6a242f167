"""``python -m shmpool``: the ``shmpool`` command.

The one place the library names the coordinator package, and only when run as a program:
importing ``shmpool`` never imports it (a reader's code path must not).
"""

import sys

from shmpool.coordinator.cli import main

sys.exit(main())
