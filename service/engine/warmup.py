"""Readiness: torch imported and one forward/backward pass run in this process."""
from __future__ import annotations

import torch

_ready = False


def warm_up(threads: int = 1) -> None:
    """Set torch's intra-op threads and run the tutorial's x**2 once, so the first request is not the slow one."""
    global _ready
    torch.set_num_threads(threads)
    x = torch.tensor(3.0, requires_grad=True)
    (x**2).backward()
    _ready = x.grad is not None and float(x.grad) == 6.0


def is_ready() -> bool:
    return _ready
