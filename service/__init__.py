"""Gradient service: PyTorch forward/backward passes over HTTP."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """pyproject.toml's version, the one source (OpenAPI's `info.version` and the image label use it too)."""
    try:
        return version("gradsvc")
    except PackageNotFoundError:  # the container runs the source tree next to pyproject.toml, not installed
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]


__version__ = _version()


def __getattr__(name: str):
    """`from service import create_app` without importing the app (Flask, views, schemas) for every submodule:
    schemas import the engine's pure modules (service.engine.values), and an eager import here would loop."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app"]
