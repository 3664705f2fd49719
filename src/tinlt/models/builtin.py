"""tinlt's own extension: the towers, tuning methods, heads and losses that ship with it.

Declared as the first ``tinlt.extensions`` entry point (pyproject.toml), so
:func:`tinlt.config.load_extensions` imports it before the first config is built. It
imports every module of ``tinlt.models.towers``, ``tinlt.models.tuning`` and
``tinlt.losses``, each of which registers what it offers; a module whose own dependency is
missing is left out and named in :data:`UNAVAILABLE` (e.g. in `tinlt models`).
"""

from __future__ import annotations

import importlib
import pkgutil

from .. import losses
from . import heads, towers, tuning  # noqa: F401 - heads register on import

UNAVAILABLE: dict[str, str] = {}


def _import_all(package) -> None:
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        name = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(name)
        except ImportError as e:
            UNAVAILABLE[name] = f"{type(e).__name__}: {e}"


for _package in (towers, tuning, losses):
    _import_all(_package)

