"""Test session settings: one torch thread per process, so test timings do not collapse when
the machine's two cores are shared (several test processes, or other work)."""

import torch

torch.set_num_threads(1)
