"""Test support: the services, servers and helpers that many test folders share.

Importable as `support` (pytest puts tests/ on sys.path: `pythonpath` in pyproject.toml), so no
test file edits sys.path. Benchmarks do not import it: what both need is in the product or
repeated in bench/ on purpose.
"""
