"""The package version, in one place (pyproject.toml's version must match; a test checks)."""

__version__ = "0.2.0"
