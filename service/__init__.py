"""Gradient service: PyTorch forward/backward passes over HTTP."""
from .app import create_app

__all__ = ["create_app"]
