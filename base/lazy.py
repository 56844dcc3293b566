"""Package names imported on first use (PEP 562): `birdlive.model` and `birdlive.streamer` export what their
modules define without importing them all, so that a command imports only what it uses (no torch for the lean
runtime, no network for `summary`)."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, where: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """`__all__`, `__getattr__` and `__dir__` for `package`, whose name N lives in its module `where[N]`
    (relative, e.g. "core.events")."""
    names = sorted(where)

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        return names
    return names, __getattr__, __dir__
