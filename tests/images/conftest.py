"""The container images, built for real with podman (tests/images/build.sh) and run.

`images` builds (or takes from the cache outside the repository) Dockerfile.api and
Dockerfile.worker on a Python 3.11 base made from Debian's packages, once per session, and
prints what each step cost (tests/support/podman_images.py).
"""

from __future__ import annotations

import pytest
from support.podman_images import Images, build


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "images: Dockerfile.api and Dockerfile.worker built with podman on a local Debian base and "
        "run (needs root, podman, runc and mmdebstrap, which scripts/bootstrap installs for the "
        "tests, and the package index for pip and Debian's packages on a cold cache)",
    )


@pytest.fixture(scope="session")
def images() -> Images:
    return build()
