"""lossbench: which loss should I train with, for this task, under these conditions?

``lossbench.run(losses=[...], tasks=[...], ...)`` runs a grid from Python and returns its tidy
table (see ``lossbench.api``); it is imported on first use, so ``import lossbench`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "run"]

if TYPE_CHECKING:
    from lossbench.api import run


def __getattr__(name: str) -> Any:
    if name == "run":
        from lossbench.api import run

        return run
    raise AttributeError(f"module 'lossbench' has no attribute {name!r}")
