"""lossbench: which loss should I train with, for this task, under these conditions?"""

__version__ = "0.1.0"
