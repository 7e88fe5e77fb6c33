"""Modules imported on first use, so the window shows before paramiko, requests and keyring load."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands in for a module until an attribute is read; then imports it (thread-safe).

    ``importlib.import_module`` holds the module's import lock, so two threads touching the
    module at once get the same, fully executed module. (``importlib.util.LazyLoader`` is not
    safe that way before Python 3.13.)
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r}, {state}>"
