"""torch's process-wide settings and a smoke test of autograd, for the service's warm-up."""

from __future__ import annotations

import torch


def set_threads(threads: int) -> None:
    """torch's intra-op threads: 1 per sync worker, so workers do not fight over the cores."""
    torch.set_num_threads(threads)


def autograd_works() -> bool:
    """The tutorial's first example, d(x**2)/dx at 3 is 6: true once torch's autograd runs in this process."""
    x = torch.tensor(3.0, requires_grad=True)
    (x**2).backward()
    return x.grad is not None and float(x.grad) == 6.0
