"""The container images' checks (no Docker engine needed): see test_dockerfiles.py."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "images: checks of Dockerfile.api, Dockerfile.worker and .dockerignore without a Docker engine "
        "(the install check needs PyPI, the hadolint check PyPI once for its binary)",
    )
