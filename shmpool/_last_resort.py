"""Warnings that reach a user who configured nothing, as the stdlib's ``logging.lastResort`` does.

shmpool logs through loguru and, as loguru advises libraries, disables its records on import: a
reader or a client process is silent. But the process that runs a Coordinator is where memory
crosses a capacity threshold, a region file is skipped, a worker dies; a user who never heard of
loguru must see that. So the first ``Coordinator.start()`` of a process calls :func:`activate`:

* shmpool's records are enabled (``logger.enable("shmpool")``);
* if loguru still has its default stderr sink (id 0: the application never configured loguru),
  that sink is replaced by an equivalent one (same stream, format and ``LOGURU_LEVEL``) that drops
  shmpool's records below WARNING, so the user sees shmpool's warnings and errors and nothing of
  its INFO or DEBUG, and the application's own loguru output is unchanged;
* if the application configured loguru (removed the default sink), its sinks receive shmpool's
  records at the levels it chose, and nothing is added.

These steps run as loguru is imported: at once if it is, else when shmpool's first warning
imports it (or the application's own import does, before it can configure anything), so a
coordinator that never warns never imports loguru (shmpool/substrate/_log.py).

Off switch, checked at activation: ``shmpool.show_warnings(False)`` before the coordinator starts,
or the environment variable ``SHMPOOL_WARNINGS=0``. Afterwards, ``logger.disable("shmpool")``
silences shmpool as for any loguru library. The CLI configures its own logging and never gets here.

Rejected: ``logger.enable("shmpool")`` alone (loguru's default sink is at DEBUG: every INFO and
DEBUG line of shmpool would reach the user's terminal) and the ``warnings`` module (its messages
are shown once per call site, so a second threshold crossing would be silent).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .substrate._log import import_loguru_for_records, logger, when_loguru_imported
from .substrate.fork_safe import ForkSafeLock

if TYPE_CHECKING:
    from loguru import Logger, Message, Record

__all__ = ["ENV_SWITCH", "activate", "show_warnings"]

ENV_SWITCH = "SHMPOOL_WARNINGS"  # "0" (or "false", "no", "off") keeps a coordinator's process silent
_PACKAGE = "shmpool"
_WARNING_NO = 30  # loguru's WARNING severity
_DEFAULT_SINK = 0  # the id loguru gives the stderr sink it adds on import

_lock = ForkSafeLock()  # made afresh in a forked child (shmpool/substrate/fork_safe.py)
_wanted = True
_activated = False


def show_warnings(enabled: bool = True) -> None:
    """Whether a process running a Coordinator prints shmpool's warnings on stderr (default: yes).

    Call it before the first ``Coordinator.start()``; ``show_warnings(False)`` afterwards also
    disables shmpool's records (``logger.disable("shmpool")``). Equivalent to the environment
    variable ``SHMPOOL_WARNINGS=0``. Readers and clients are silent either way.
    """
    global _wanted
    with _lock:
        _wanted = enabled
        if not enabled and _activated:
            logger.disable(_PACKAGE)


def _switched_off() -> bool:
    return not _wanted or os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off")


def activate() -> None:
    """Make shmpool's WARNING and above visible in this process (once; see the module docstring).

    Done as loguru is imported: now if it is, else by shmpool's first warning (or by the
    application's own import of loguru), so a coordinator that never warns never imports it
    (~70 ms of its start; shmpool/substrate/_log.py). Until then shmpool's records below WARNING
    are dropped, as the sink below would drop them."""
    global _activated
    with _lock:
        if _activated or _switched_off():
            return
        _activated = True
        when_loguru_imported(_show_warnings_on_stderr)
        import_loguru_for_records("WARNING")


def _show_warnings_on_stderr(log: "Logger") -> None:
    try:
        log.remove(_DEFAULT_SINK)
    except ValueError:
        pass  # the application configured loguru: its sinks, its levels
    else:
        # loguru's own default, except for shmpool's records below WARNING. sys.stderr looked
        # up per message, as loguru's default does, so pytest's and rich's swaps still work.
        log.add(_to_stderr, level=os.environ.get("LOGURU_LEVEL", "DEBUG"),
                filter=_not_quiet_shmpool, colorize=sys.stderr.isatty())
    log.enable(_PACKAGE)


def _to_stderr(message: "Message") -> None:
    sys.stderr.write(message)


def _not_quiet_shmpool(record: "Record") -> bool:
    name = record["name"] or ""
    if not (name == _PACKAGE or name.startswith(_PACKAGE + ".")):
        return True
    return record["level"].no >= _WARNING_NO
