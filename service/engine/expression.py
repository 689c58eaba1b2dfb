"""Expression models: a catalog entry or a free-form formula, differentiated with respect to its inputs."""

from __future__ import annotations

import torch

from .catalog import CATALOG, manual_gradients, parsed
from .errors import ShapeError, UnknownExpression, UnknownVariable
from .formula import Formula, parse_formula
from .graph import Trace
from .limits import NO_DEADLINE, Deadline, Limits


class Expression:
    """One instance per request; the formula is parsed (and limit-checked) once, evaluated as often as needed."""

    inputs = None  # the formula's variables
    default_wrt = None  # every input
    per_sample = False
    scalar_advice = "reduce it (sum(...) or mean(...))"

    def __init__(self, spec: dict, limits: Limits, deadline: Deadline = NO_DEADLINE) -> None:
        if "name" in spec:
            self.catalog_entry = CATALOG.get(spec["name"])
            if self.catalog_entry is None:
                raise UnknownExpression(f"no expression named {spec['name']!r}; known: {', '.join(CATALOG)}")
            source = self.catalog_entry.formula
        else:
            self.catalog_entry = None
            source = spec["formula"]
        self.limits, self.deadline = limits, deadline
        self.formula = parse_formula(source, limits)
        self.dtype = torch.float32

    def shapes(self, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The inputs are every tensor: nothing is generated."""
        return given

    def complete(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return tensors

    def prepare(self, tensors: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Check every variable has an input, then make the `wrt` inputs leaves that require grad."""
        missing = [v for v in self.formula.variables if v not in tensors]
        if missing:
            raise UnknownVariable(
                f"formula uses {', '.join(map(repr, missing))} but the inputs are: {', '.join(tensors) or 'none'}"
            )
        self.dtype = next(iter(tensors.values())).dtype if tensors else self.dtype
        leaves = dict(tensors)
        for name in wrt:
            leaves[name] = leaves[name].detach().requires_grad_(True)
        return leaves

    def forward(
        self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None, trace: Trace | None = None
    ) -> torch.Tensor:
        """`trace` is not needed: every subexpression is one torch op, already in `record` by its source text."""
        return self.formula.evaluate(t, dtype=self.dtype, record=record, deadline=self.deadline)

    no_manual = "a free-form formula has no hand-derived gradient"

    def manual(
        self, t: dict[str, torch.Tensor], wrt: tuple[str, ...], dout: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor] | None:
        """The catalog's hand-derived gradient (its product with `dout` when given); None for free-form formulas
        (there is none) and where the hand formula does not apply to these shapes (`no_manual` says why)."""
        if self.catalog_entry is None:
            return None
        try:
            grads = manual_gradients(self.catalog_entry, t, dtype=self.dtype, limits=self.limits, dout=dout, wrt=wrt)
        except ShapeError as error:
            self.no_manual = f"the hand-derived gradient does not apply to these shapes: {error.detail}"
            return None
        return {name: grads[name] for name in wrt if name in grads}

    def manual_formulas(self) -> list[tuple[str, Formula]]:
        """(input name, parsed hand-derived gradient) of a catalog entry, for the cost model; none for a formula."""
        if self.catalog_entry is None:
            return []
        return [(name, parsed(source, self.limits)) for name, source in self.catalog_entry.gradient.items()]

    def diagnose(self, record: dict[str, torch.Tensor]) -> list[str]:
        return []
