"""Naming a function so another process can find it again: ``module:qualname``, never pickle.

A job crosses the job board as the text ``"module:qualname"``; the worker imports the module and
looks the name up. So only functions that such a lookup finds again can travel: module-level
functions (builtins included) of a module the worker can import. This module says which, and
why not, before anything is sent.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ..errors import InvalidJob

__all__ = ["target_of", "import_target", "home_module", "TARGET_RE", "MODULE_RE"]

_MODULE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
MODULE_RE = re.compile(rf"^{_MODULE}$")
TARGET_RE = re.compile(rf"^({_MODULE}):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")  # module:qualname


def import_target(target: str) -> Any:
    """The object ``"module:qualname"`` names (ImportError / AttributeError if there is none)."""
    module_name, qualname = target.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# C functions report the module that implements them, not the one users import them from:
# os.getcwd is "posix:getcwd", operator.add "_operator:add". An allow-list of job_modules=["os"]
# then refused os.getcwd by a name the user never wrote.
_IMPLEMENTED_IN = {"posix": "os", "nt": "os"}


def _public_home(fn: Any, module: Any, qualname: Any) -> Any:
    """The public module ``fn`` is imported from, where it is the very same object; else ``module``."""
    if not isinstance(module, str) or not isinstance(qualname, str):
        return module
    public = _IMPLEMENTED_IN.get(module) or (module[1:] if module.startswith("_") else None)
    if public is None:
        return module
    try:
        found = getattr(importlib.import_module(public), qualname, None)
    except ImportError:
        return module
    return public if found is fn else module


def home_module(fn: Any) -> str:
    """The module ``fn`` is defined in as users see it: ``os`` for os.getcwd (not ``posix``)."""
    module = getattr(fn, "__module__", None) or ""
    return str(_public_home(fn, module, getattr(fn, "__qualname__", None)))


def target_of(fn: Any, *, job: str = "", use: str = "allowed") -> str:
    """``module:qualname`` of a callable a worker can import by name; InvalidJob saying why not.

    ``job`` and ``use`` only shape the error (an allow-list entry is "allowed", a submitted
    callable is "sent to a worker").
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    module = _public_home(fn, module, qualname)
    target = f"{module}:{qualname}"
    job = job or (str(qualname) if qualname else repr(fn))

    def refuse(reason: str, shown: str = target) -> InvalidJob:
        return InvalidJob(job=job, target=shown, reason=reason, use=use)

    if not callable(fn) or not module or not qualname:
        raise refuse("not a function with a module and a name; pass a module-level function (def at the "
                     "top of an importable module) or a job name", repr(fn))
    if "<lambda>" in qualname:
        raise refuse("a lambda has no name a worker could import; define it with def at module level in an "
                     "importable module")
    if "<locals>" in qualname:
        raise refuse("a function nested in another has no name a worker could import; move it to module "
                     "level in an importable module")
    if module == "__main__":
        raise refuse("defined in the script being run (__main__), which a worker cannot import by that "
                     "name (and importing a script runs it again); move it into a module next to the script "
                     "(workers get the coordinator's sys.path) and import it from there")
    if "." in qualname:
        raise refuse("a method or class attribute; only module-level functions can be named in a worker")
    if not TARGET_RE.match(target):
        raise refuse("not a 'package.module:function' path")
    try:
        found = import_target(target)
    except (ImportError, AttributeError) as exc:
        raise refuse(f"cannot be found again by name: {exc}") from None
    if found is not fn:
        raise refuse("its name leads to another object (a decorated or rebound function?)")
    return target
