"""The CLI's commands, one module per group; ``lossbench.cli`` assembles them into the app.

Module level imports stay light (typer, rich, the standard library): torch, pandas and the
registries load inside the commands that need them, so ``lossbench --help`` is instant.
"""
