"""The engine: grid expansion, the training loop, executors and the run store."""
