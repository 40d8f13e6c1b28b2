"""Run a patch when the module it patches is imported, not before: the API process never imports
torch or diffusers, and importing them at start-up would slow ``import service`` and ``bentoml build``
by seconds. So ``install_patches`` registers the engine's patches here, and each runs right after its
module's code ran, in whichever process imports it (the engine's workers), before anyone uses it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import Any, Callable

Patch = Callable[[ModuleType], None]


class _ThenPatch(importlib.abc.Loader):
    """A module's own loader, then its waiting patches."""

    def __init__(self, loader: Any, finder: "_AfterImport", name: str):
        self.loader = loader
        self.finder = finder
        self.name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        for patch in self.finder.take(self.name):
            patch(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Patch]] = {}

    def add(self, name: str, patch: Patch) -> None:
        with self._lock:
            self._waiting.setdefault(name, []).append(patch)

    def take(self, name: str) -> list[Patch]:
        with self._lock:
            return self._waiting.pop(name, [])

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenPatch(spec.loader, self, fullname)
                return spec
        return None


_FINDER = _AfterImport()


def when_imported(name: str, patch: Patch) -> None:
    """Run ``patch(module)`` once module ``name`` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    _FINDER.add(name, patch)
