"""HTTP views, one module per resource; each view loads the body, calls the engine and returns the result."""

from __future__ import annotations

from . import batch, check, gradients, meta

BLUEPRINTS = (gradients.bp, check.bp, batch.bp, meta.bp)
