"""Task families. Importing this package registers every family module beside it."""

import importlib
import pkgutil

from lossbench.families.base import FAMILIES, RunContext, RunOutput

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["FAMILIES", "RunContext", "RunOutput"]
