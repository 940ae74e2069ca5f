"""The images of Dockerfile.api and Dockerfile.worker, built with podman and run.

Each built image must run `downloader version`, run as UID/GID 10001 (the Helm chart's
securityContext) with /data its own, hold no compiler, keep the venv (and nothing of the
sources) with libmagic working, and say in its config what the Dockerfile promises (entry
point, command, working directory, environment, ports, labels, the api's HEALTHCHECK). The
build context is read through .dockerignore by a real build too. The images' sizes are
printed. Built on a Debian base made here (the Dockerfiles' BASE build argument), as no
registry is reachable: see build.sh.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from support.podman_images import RUN_OPTIONS, Images, print_figures

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
NAMES = ["api", "worker"]
UID = GID = 10001  # the Helm chart's runAsUser / runAsGroup
EXPECTED_CMD = {"api": ["api", "--host", "0.0.0.0", "--port", "8000"], "worker": ["worker"]}
EXPECTED_PORTS = {"api": "8000/tcp", "worker": "9100/tcp"}
#: What a compiler toolchain would put on PATH; none of it may be in a runtime image.
COMPILERS = ["cc", "gcc", "c++", "g++", "clang", "ld", "as", "make", "cpp"]
#: The runtime probe: one python run that reports what the image holds, as JSON.
PROBE = """
import json, os, shutil, sys, tempfile
import downloader, downloader.api.main, downloader.worker.processor, downloader.operator.main
import hiredis, magic, PIL
compilers = sys.argv[1].split(",")
lists = [n for n in os.listdir("/var/lib/apt/lists") if n not in ("lock", "partial", "auxfiles")]
with tempfile.NamedTemporaryFile(dir="/data") as f:
    writable = True
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
    "data_owner": [os.stat("/data").st_uid, os.stat("/data").st_gid], "data_writable": writable,
    "package": downloader.__file__, "python": sys.version_info[:2], "executable": sys.executable,
    "compilers": [c for c in compilers if shutil.which(c)],
    "src": os.path.exists("/src"), "apt_lists": lists,
    "mime": magic.from_buffer(b"%PDF-1.4\\n%\\xe2\\xe3\\xcf\\xd3\\n", mime=True),
}))
"""


@pytest.fixture(scope="module")
def probes(images: Images) -> dict[str, dict[str, object]]:
    out = {}
    for name in NAMES:
        stdout = images.podman.run(images.ref(name), "-c", PROBE, ",".join(COMPILERS), entrypoint="python")
        out[name] = json.loads(stdout)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_runs_downloader_version(images: Images, name: str) -> None:
    assert images.podman.run(images.ref(name), "version").strip() == f"Downloader Version {VERSION}"


@pytest.mark.parametrize("name", NAMES)
def test_runs_as_uid_10001_owning_data(
    images: Images, probes: dict[str, dict[str, object]], name: str
) -> None:
    assert images.podman.inspect(images.ref(name))["Config"]["User"] == f"{UID}:{GID}"
    probe = probes[name]
    assert (probe["uid"], probe["gid"]) == (UID, GID)
    assert probe["cwd"] == "/data" and probe["data_owner"] == [UID, GID] and probe["data_writable"]
    # the name too, for tools that show users by name
    assert images.podman.run(images.ref(name), "-un", entrypoint="id").strip() == "downloader"


@pytest.mark.parametrize("name", NAMES)
def test_no_compiler(images: Images, probes: dict[str, dict[str, object]], name: str) -> None:
    assert probes[name]["compilers"] == [], f"{name}: a toolchain on PATH: {probes[name]['compilers']}"
    packages = images.podman.run(
        images.ref(name), "-W", "-f", "${Package}\\n", entrypoint="dpkg-query"
    ).split()
    toolchain = [
        p
        for p in packages
        if p in {"build-essential", "binutils", "make"}
        or re.fullmatch(r"(gcc|g\+\+|cpp|clang|llvm)(-\d+)?", p)
        or p.endswith("-dev")
    ]
    assert toolchain == [], f"{name}: compiler packages installed: {toolchain}"


@pytest.mark.parametrize("name", NAMES)
def test_venv_alone_with_libmagic(images: Images, probes: dict[str, dict[str, object]], name: str) -> None:
    probe = probes[name]
    assert probe["python"] == [3, 11]
    assert str(probe["executable"]).startswith("/opt/venv/bin/")
    assert str(probe["package"]).startswith("/opt/venv/lib/python3.11/site-packages/downloader/"), probe
    assert probe["src"] is False, "the sources stayed in the builder stage"
    assert probe["mime"] == "application/pdf", "libmagic answers"
    assert probe["apt_lists"] == [], "apt lists are removed in the RUN that fills them"


@pytest.mark.parametrize("name", NAMES)
def test_image_config(images: Images, name: str) -> None:
    info = images.podman.inspect(images.ref(name))
    config = info["Config"]
    assert config["Entrypoint"] == ["downloader"]
    assert config["Cmd"] == EXPECTED_CMD[name]
    assert config["WorkingDir"] == "/data"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1"
    assert "PIP_CERT" not in env, "the build's CA bundle setting stays in the builder stage"
    assert list(config.get("ExposedPorts") or {}) == [EXPECTED_PORTS[name]]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == f"downloader-{name}"
    assert labels["org.opencontainers.image.version"] == VERSION, "the label follows pyproject's version"
    assert labels["org.opencontainers.image.licenses"] == "GPL-3.0-or-later"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    health = info.get("Healthcheck")
    if name == "api":
        assert health and "/healthz" in " ".join(health["Test"]), health
    else:
        assert not health, "Kubernetes uses the chart's probes"


def test_host_ca_bundle_not_baked_in(images: Images) -> None:
    """The build mounts the host's CA bundle (it holds this machine's TLS proxy CA) for pip;
    the images must keep Debian's own bundle, without the host's local CAs."""
    local = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    for name in NAMES:
        bundle = images.podman.run(images.ref(name), "/etc/ssl/certs/ca-certificates.crt", entrypoint="cat")
        for cert in local:
            body = "".join(cert.read_text().split())
            assert body not in "".join(bundle.split()), f"{name}: the host's {cert.name} is in the image"
        assert images.podman.run(images.ref(name), "/usr/local/share/ca-certificates", entrypoint="ls") == ""
        history = images.podman(
            "history", "--no-trunc", "--format", "{{.CreatedBy}}", images.ref(name)
        ).stdout
        assert "PIP_CERT" not in history, f"{name}: the build's PIP_CERT is in the image's history"


def test_build_context_follows_dockerignore(images: Images, tmp_path: Path) -> None:
    """A real build of the repository's context (`COPY . /ctx`, Dockerfile outside it):
    what .dockerignore keeps out never reaches a build, and what the Dockerfiles copy does."""
    probe = tmp_path / "Containerfile"
    probe.write_text(f"FROM {images.base}\nCOPY . /ctx\n")
    tag = "localhost/downloader-context-probe:test"
    images.podman("build", "--network", "none", "--file", str(probe), "--tag", tag, str(ROOT), timeout=300)
    try:
        listing = images.podman.run(tag, "/ctx", "-mindepth", "1", entrypoint="find").split()
    finally:
        images.podman("rmi", tag, check=False)
    paths = {p.removeprefix("/ctx/") for p in listing}
    for kept in [
        "pyproject.toml",
        "README.md",
        "COPYING",
        "downloader/cli/__init__.py",
        "api",
        "worker",
        "k8s_operator",
    ]:
        assert kept in paths, f"{kept} is missing from the build context"
    for ignored in [".git", ".venv", "build", "tests", "bench", "data", ".mypy_cache", ".ruff_cache", ".ci"]:
        assert ignored not in paths, f".dockerignore lets {ignored} into the build context"
    assert not [p for p in paths if "__pycache__" in p or p.endswith((".pyc", ".pyo"))]
    assert not [p for p in paths if p.endswith(".egg-info") or p.startswith("Dockerfile")]


def test_sizes(images: Images) -> None:
    figures: dict[str, object] = {}
    for ref in [images.base, images.api, images.worker]:
        info = images.podman.inspect(ref)
        size = int(info["Size"])
        figures[ref.split("/")[-1].split(":")[0]] = (
            f"{size / 1e6:.0f} MB ({size} bytes), {len(info['RootFS']['Layers'])} layers"
        )
        assert size > 0
    print_figures("image sizes (podman image inspect)", figures)
    # the runtime options the tests use work; checked once here, with a trivial container
    assert (
        images.podman("run", "--rm", *RUN_OPTIONS, "--network", "none", images.base, "true").returncode == 0
    )
