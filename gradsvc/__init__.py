"""gradsvc: a small client for the gradient service (POST /v1/gradients, /v1/check, /v1/batch)."""

from .client import Client, ClientError, GradsvcError, ProblemError, RequestError, ServerError, ServiceUnavailable

__all__ = [
    "Client",
    "ClientError",
    "GradsvcError",
    "ProblemError",
    "RequestError",
    "ServerError",
    "ServiceUnavailable",
]
