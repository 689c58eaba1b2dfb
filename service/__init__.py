"""Gradient service: PyTorch forward/backward passes over HTTP."""
from __future__ import annotations


def __getattr__(name: str):
    """`from service import create_app` without importing the app (Flask, views, schemas) for every submodule:
    schemas import the engine's pure modules (service.engine.values), and an eager import here would loop."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app"]
