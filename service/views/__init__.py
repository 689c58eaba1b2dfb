"""HTTP views, one module per resource; each view loads the body, calls the engine and returns the result."""

from __future__ import annotations

from . import batch, check, grade, gradients, meta, playground

BLUEPRINTS = (gradients.bp, check.bp, grade.bp, batch.bp, meta.bp, playground.bp)
