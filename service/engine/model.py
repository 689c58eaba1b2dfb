"""What a model kind provides: the one interface compute(), the grader and the batch runner rely on."""

from __future__ import annotations

from typing import Protocol

import torch

from .graph import Trace
from .limits import Deadline, Limits


class Model(Protocol):
    """A model kind (the neuron; an expression, from the catalog or a free-form formula; a network).

    One instance per request, built from the loaded `model` object of the request. Adding a kind means one class
    with these members, an entry in compute.MODEL_KINDS, and a request schema in schemas/requests.py.
    """

    # the input names it takes (None: whatever its formula uses), and what `wrt` is when the request omits it
    # (None: every input)
    inputs: tuple[str, ...] | None
    default_wrt: tuple[str, ...] | None
    # set by prepare(): the output holds one loss per sample and backward runs from their sum
    per_sample: bool
    # what the 422 for a non-scalar output without `dout` tells the client to do, in this kind's own terms
    scalar_advice: str

    def __init__(self, spec: dict, limits: Limits, deadline: Deadline) -> None:
        """Check the spec beyond what the schema can (e.g. parse a formula within the limits)."""

    def shapes(self, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape from the request's input shapes alone, before anything is allocated: the inputs,
        plus what the model makes itself (a network's generated X and parameters). Sets what depends on them
        (a network's default_wrt); the cost model prices these shapes."""

    def complete(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The input tensors plus the ones the model makes itself (generated from seeds, in the request's
        `dtype`), once the cost model has accepted the request."""

    def prepare(self, tensors: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Check the inputs fit the model; return them with the `wrt` ones as fresh leaves requiring grad."""

    def forward(
        self,
        tensors: dict[str, torch.Tensor],
        record: dict[str, torch.Tensor] | None = None,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        """The output backward() starts from; named intermediates go into `record` when it is given, and every
        other intermediate on the way to the output into `trace` (for the graph's values) when it is given."""

    def manual(
        self, tensors: dict[str, torch.Tensor], wrt: tuple[str, ...], dout: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor] | None:
        """A hand-derived gradient to set beside autograd's (with `dout`, the output's upstream gradient, the
        vector-Jacobian product dout·J, as autograd computes it), or None when the model has none for these
        inputs; then its `no_manual` says why."""

    def diagnose(self, record: dict[str, torch.Tensor]) -> list[str]:
        """Warnings about the forward pass (e.g. where a clamp bites)."""
