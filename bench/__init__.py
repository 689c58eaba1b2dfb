"""Benchmarks of the service against a bare Flask endpoint and a naive Flask+torch handler (python -m bench)."""
