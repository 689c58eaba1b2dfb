"""marshmallow schemas for requests, responses and errors (no torch here)."""

from .errors import ProblemSchema
from .requests import GradientRequestSchema
from .responses import GradientResponseSchema, ModelsResponseSchema, StatusSchema

__all__ = ["GradientRequestSchema", "GradientResponseSchema", "ModelsResponseSchema", "ProblemSchema", "StatusSchema"]
