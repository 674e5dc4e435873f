"""The loss catalogue. Importing this package registers every loss module beside it."""

import importlib
import pkgutil

from lossbench.losses.base import LOSSES, Loss

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["LOSSES", "Loss"]
