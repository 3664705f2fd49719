"""CLI plug-ins: each module here defines ``register(subparsers) -> {command: handler}``.

Keeps cli.py small and lets a feature (reports, export, sweeps) bring its own commands.
Modules must import only light things at top level; heavy imports go inside handlers.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict


def register_all(subparsers) -> Dict[str, Callable]:
    handlers: Dict[str, Callable] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "register"):
            handlers.update(mod.register(subparsers))
    return handlers
