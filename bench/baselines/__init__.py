"""Baselines served under the same gunicorn config as the service: the framework's ceiling and a naive handler."""
