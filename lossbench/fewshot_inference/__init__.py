"""Few-shot inference: how an episode's queries are labelled from its support set, an axis of the
few-shot family independent of the training loss (``eval.inference``). Importing this package
registers every method module beside it."""

import importlib
import pkgutil

from lossbench.fewshot_inference.base import INFERENCE, build_method, method_label

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["INFERENCE", "build_method", "method_label"]
