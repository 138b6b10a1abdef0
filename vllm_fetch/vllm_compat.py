"""Installing vllm_fetch into a running vLLM: ``install()`` swaps ``vllm.connections``' client.

vLLM's modules import names from ``vllm.connections`` by value (the media connector binds
``global_http_connection`` as a default argument; it and ``run_batch`` catch the size errors by
vLLM's classes). So ``install()``

- sets the module's ``global_http_connection`` and ``HTTPConnection`` to vllm_fetch's, and
  rebinds the old connection wherever modules of the same package already hold it (module
  globals, default arguments of their functions and methods);
- makes, for each error class the module defines under a name vllm_fetch also defines, a class
  that inherits from both, and from then on raises that one: vLLM's ``except`` clauses (and
  ``isinstance`` checks against ``VLLMValidationError``) match what vllm_fetch raises.

Budgets made by vLLM's own ``MediaRequestDownloadBudget`` keep working: vllm_fetch charges any
object with a ``charge(size)`` method and turns its refusal into its own error class.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import FunctionType, ModuleType
from typing import Any

from . import connections, errors

logger = logging.getLogger("vllm_fetch")

#: The error classes vLLM 0.33's ``vllm.connections`` defines, by name.
ADOPTABLE: tuple[type[errors.FetchError], ...] = (
    errors.HTTPResponseSizeExceededError,
    errors.MediaDownloadSizeExceededError,
    errors.MediaRequestDownloadSizeExceededError,
)

_lock = threading.Lock()


def _adopt(ours: type[errors.FetchError], theirs: Any) -> None:
    if not isinstance(theirs, type) or not issubclass(theirs, BaseException):
        return
    current = errors.ADOPTED.get(ours)
    if issubclass(ours, theirs) or (current is not None and issubclass(current, theirs)):
        return
    base = current or ours
    namespace = {"__module__": ours.__module__, "__qualname__": ours.__qualname__,
                 "__doc__": ours.__doc__, "__str__": ours.__str__,
                 "__repr__": BaseException.__repr__}
    errors.ADOPTED[ours] = type(ours.__name__, (base, theirs), namespace)


def _rebind_defaults(func: Any, old: object, new: object) -> None:
    func = getattr(func, "__func__", func)  # classmethod / staticmethod / bound
    if not isinstance(func, FunctionType):
        return
    if func.__defaults__ and any(d is old for d in func.__defaults__):
        func.__defaults__ = tuple(new if d is old else d for d in func.__defaults__)
    kwdefaults = func.__kwdefaults__
    if kwdefaults:
        for name, value in kwdefaults.items():
            if value is old:
                kwdefaults[name] = new


def _rebind(package: str, old: object, new: object) -> int:
    """Replace ``old`` by ``new`` in the loaded modules of ``package``; how many places."""
    count = 0
    for name, mod in list(sys.modules.items()):
        if not isinstance(mod, ModuleType) or not (name == package
                                                    or name.startswith(package + ".")):
            continue
        namespace = vars(mod)
        for key, value in list(namespace.items()):
            if value is old:
                namespace[key] = new
                count += 1
            elif isinstance(value, FunctionType) and value.__module__ == name:
                _rebind_defaults(value, old, new)
            elif isinstance(value, type) and value.__module__ == name:
                for attr in vars(value).values():
                    _rebind_defaults(attr, old, new)
    return count


def install(module: ModuleType | None = None) -> ModuleType:
    """Make vLLM's ``vllm.connections`` (``module``; imported when None) use vllm_fetch.

    Idempotent. Returns the module. Objects vLLM made before with the old connection passed
    explicitly keep it; call ``install()`` at startup, before vLLM builds its engine.
    """
    if module is None:
        module = importlib.import_module("vllm.connections")
    with _lock:
        for ours in ADOPTABLE:
            _adopt(ours, getattr(module, ours.__name__, None))
        package = module.__name__.partition(".")[0]
        places = 0
        for name in ("HTTPConnection", "global_http_connection"):
            old, new = getattr(module, name, None), getattr(connections, name)
            setattr(module, name, new)
            if old is not None and old is not new:
                places += _rebind(package, old, new)
        logger.info("vllm_fetch installed into %s (%d references rebound)", module.__name__,
                    places)
    return module
