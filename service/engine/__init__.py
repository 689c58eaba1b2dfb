"""The torch side of the service: every `import torch` lives in this package, and no Flask."""

from __future__ import annotations

from .compute import compute
from .describe import models_document
from .errors import EngineError
from .limits import Limits

__all__ = ["EngineError", "Limits", "compute", "models_document"]
