"""The helm binary of the chart tests: `go install helm.sh/helm/v3/cmd/helm@v3.22.0`, built once.

`helm_binary()` returns the cached binary, building it first when it is missing. The cache
lives outside the repository, in `${DOWNLOADER_HELM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/
downloader-helm}/<version>/helm`. The build goes to a temporary GOBIN beside it and is renamed
into place, under a file lock, so concurrent sessions neither race nor see a half-written file.

ldflags stamp what helm's Makefile stamps:
- `internal/version.version` / `gitCommit` / `gitTreeState`: `helm version` prints v3.22.0
  (unstamped, it would say "v3.22"). The module proxy carries no git commit, so gitCommit
  names the module version instead of a sha.
- `pkg/chartutil.k8sVersion{Major,Minor}` and `pkg/lint/rules.k8sVersion{Major,Minor}`: the
  Kubernetes version `helm template` and `helm lint` assume without a cluster. Unstamped it
  is 1.20, which our `kubeVersion: ">=1.30.0-0"` refuses; the Makefile derives it from the
  module's client-go (v0.37.0 -> 1.37), and so do we (K8S_MINOR below).

A failed build raises HelmBuildError with go's output; the fixture turns it into a test
failure, never a skip.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HELM_MODULE = "helm.sh/helm/v3"
HELM_VERSION = "v3.22.0"
#: helm v3.22.0 builds against k8s.io/client-go v0.37.0: Kubernetes 1.37 (the Makefile's rule).
K8S_MAJOR, K8S_MINOR = "1", "37"
BUILD_TIMEOUT_SECONDS = 1800


class HelmBuildError(RuntimeError):
    """go install failed, or go is missing."""


def cache_dir() -> Path:
    root = os.environ.get("DOWNLOADER_HELM_CACHE")
    if root:
        return Path(root) / HELM_VERSION
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "downloader-helm" / HELM_VERSION


def ldflags() -> str:
    v = f"{HELM_MODULE}/internal/version"
    flags = [
        "-s", "-w",
        f"-X {v}.version={HELM_VERSION}",
        f"-X {v}.gitCommit=module-{HELM_VERSION}",
        f"-X {v}.gitTreeState=clean",
    ]  # fmt: skip
    for pkg in ("pkg/chartutil", "pkg/lint/rules"):
        flags += [f"-X {HELM_MODULE}/{pkg}.k8sVersionMajor={K8S_MAJOR}",
                  f"-X {HELM_MODULE}/{pkg}.k8sVersionMinor={K8S_MINOR}"]  # fmt: skip
    return " ".join(flags)


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise HelmBuildError("the go command is not on PATH (Go >= 1.26 builds helm v3.22.0)")
    return found


def helm_binary() -> Path:
    """The path of the helm binary, built with `go install` into the cache if missing."""
    target = cache_dir() / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if target.is_file() and os.access(target, os.X_OK):
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as gobin:
            env = {**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0",
                   "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local"),
                   "GOFLAGS": "-buildvcs=false"}  # fmt: skip
            cmd = [_go(), "install", "-trimpath", "-ldflags", ldflags(),
                   f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"]  # fmt: skip
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                      timeout=BUILD_TIMEOUT_SECONDS, check=False)  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise HelmBuildError(f"go install helm timed out after {BUILD_TIMEOUT_SECONDS}s") from exc
            built = Path(gobin) / "helm"
            if done.returncode != 0 or not built.is_file():
                raise HelmBuildError(
                    f"go install {HELM_MODULE}/cmd/helm@{HELM_VERSION} failed "
                    f"(exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
                )
            built.replace(target)
    return target


if __name__ == "__main__":  # print the path (building if needed), e.g. for .ci/run or a shell
    print(helm_binary())
