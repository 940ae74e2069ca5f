"""A real Kubernetes node for the tests: containerd + runc and a kubelet v1.37.2 on this host.

`build()` runs tests/node/build.sh (kubelet, containerd, shim, ctr, pause; cached outside the
repository). `RealNode` starts containerd in a work directory, imports the sandbox image and
the given podman images, and starts a kubelet that joins a `ControlPlane`
(tools/testbed/controlplane.py) as Node `127.0.0.1`, tainted and labelled so that only pods meant for it land there. The
kubelet uses fixed host paths: one real node per machine, behind a machine-wide flock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from testbed.controlplane import ControlPlane, ControlPlaneError, Proc, free_port, run_build_script, tail

from support import pause_image

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tests" / "node" / "build.sh"
BUILD_TIMEOUT = 60 * 60.0
K8S_VERSION = "v1.37.2"
CONTAINERD_VERSION = "v2.4.2"
#: A node named by an IP gets that IP as its InternalIP without the kubelet's "nodeIP can't be
#: loopback" check: the API server reaches the kubelet (logs, exec) on 127.0.0.1, and
#: host-network pods get podIP 127.0.0.1.
NODE_NAME = "127.0.0.1"
LABEL_KEY, LABEL_VALUE = "downloader.test/node", "real"
#: The other k8s tests' pods expect kwok (and images such as redis:7, which cannot be pulled
#: here): only pods tolerating this taint are ever scheduled onto the real node.
TAINT_KEY, TAINT_VALUE, TAINT_EFFECT = "downloader.test/real-node", "true", "NoSchedule"
#: Held while a node runs: the kubelet writes fixed host paths (below), so one node per machine;
#: another test run on this machine waits for it.
LOCK_PATH = Path("/run/downloader-node.lock")
#: Sockets and short-lived state (a unix socket path must stay under 108 bytes), and the record
#: (state.json) that lets the next start undo what a killed run left behind.
RUN_DIR = Path("/run/downloader-node")
RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
PAUSE_REF = f"localhost/downloader-pause:3.10-k8s-{K8S_VERSION}"
#: The kubelet sets these when they differ from its wishes; saved before it starts, restored on stop.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
#: The kubelet's hard-coded paths outside --root-dir; removed on stop when this node made them.
FIXED_DIRS = (Path("/var/lib/kubelet"), Path("/var/lib/kubelet/device-plugins"), Path("/var/log/containers"))
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")
#: Within pytest's per-test timeout (300 s; the node starts in the first real-node test's setup)
#: with room for the start itself, so that a wait for another run's node fails with its own message.
LOCK_TIMEOUT = 180.0
START_TIMEOUT = 120.0


class NodeError(RuntimeError):
    """The real node could not be built, started or stopped cleanly (the message says why)."""


def build(timeout: float = BUILD_TIMEOUT) -> Path:
    """Run build.sh (a cache hit returns at once) and return the directory of the binaries."""
    bin_dir = run_build_script(BUILD_SCRIPT, timeout, NodeError)
    if bin_dir is None or not (bin_dir / "kubelet").is_file():
        raise NodeError(f"{BUILD_SCRIPT} printed no binary directory")
    return bin_dir


def _mounts_under(*dirs: Path) -> list[str]:
    """Mount points at or below `dirs`, deepest first."""
    prefixes = [str(d) for d in dirs]
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)


def _pids_with(exe_name: str, needle: str) -> list[int]:
    """PIDs whose executable is named `exe_name` and whose command line holds `needle`."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if os.path.basename(exe.removesuffix(" (deleted)")) == exe_name and needle in cmdline:
            found.append(int(entry.name))
    return found


def _kill_cgroup_tasks(trees: Sequence[Path]) -> bool:
    """SIGKILL every process in the cgroup trees `trees`; whether there was any."""
    pids: set[int] = set()
    for tree in trees:
        for procs in tree.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(pid) for pid in procs.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


class RealNode:
    """containerd (CRI, runc, cgroupfs, overlayfs) and a kubelet joined to `cluster` as Node
    `name` ("127.0.0.1"), tainted `TAINT_KEY=true:NoSchedule` and labelled `LABEL_KEY=real`.

    A pod for it needs `hostNetwork: true`, `node_selector`, `tolerations`,
    `imagePullPolicy: Never` and an image of `images` (name -> reference, exported by `podman
    save` from the test image store) or one `tag_image()` made; `pod_env` points in-cluster
    clients at the API server (no kube-proxy here).
    `timings` holds the seconds of each start step, `logs` the log files.
    """

    def __init__(
        self,
        workdir: Path,
        bin_dir: Path,
        cluster: ControlPlane,
        podman: Sequence[str] = (),
        images: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir
        self.cluster = cluster
        self.podman = list(podman)
        #: what start() loads into containerd's k8s.io namespace, by name: {"api":
        #: "localhost/downloader-api:KEY", "worker": ...} (load() adds more)
        self.images: dict[str, str] = dict(images or {})
        self.name = NODE_NAME
        self.labels = {LABEL_KEY: LABEL_VALUE}
        self.node_selector = {LABEL_KEY: LABEL_VALUE}
        self.taints = [{"key": TAINT_KEY, "value": TAINT_VALUE, "effect": TAINT_EFFECT}]
        self.tolerations = [
            {"key": TAINT_KEY, "operator": "Equal", "value": TAINT_VALUE, "effect": TAINT_EFFECT}
        ]
        #: the API server's port, for KUBERNETES_SERVICE_PORT (see `pod_env`)
        self.api_server_port = cluster.port
        self.socket = RUN_DIR / "containerd.sock"
        self.logs = {
            "containerd": self.workdir / "logs" / "containerd.log",
            "kubelet": self.workdir / "logs" / "kubelet.log",
        }
        self.kubelet_dir = self.workdir / "kubelet"
        self.containerd_root = self.workdir / "containerd"
        self.kubelet_port = 0
        self.healthz_port = 0
        #: seconds of each step of start() and stop()
        self.timings: dict[str, float] = {}
        self.procs: dict[str, Proc] = {}
        self._lock_fd: int | None = None

    @property
    def pod_env(self) -> list[dict[str, str]]:
        """Container env for in-cluster API access: the `kubernetes` Service's ClusterIP leads
        nowhere without kube-proxy, and a container's own variables win over the injected ones."""
        return [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_server_port)},
        ]

    # -- lifecycle --------------------------------------------------------------------
    def start(self, lock_timeout: float = LOCK_TIMEOUT) -> RealNode:
        t0 = time.monotonic()
        for name in ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "pause"):
            if not (self.bin_dir / name).is_file():
                raise NodeError(f"{self.bin_dir / name} is missing (run {BUILD_SCRIPT})")
        for path, package in ((RUNC, "runc"), (CNI_BIN_DIR / "loopback", "containernetworking-plugins")):
            if not path.is_file():
                raise NodeError(f"{path} is missing: scripts/bootstrap images installs {package}")
        self._lock(lock_timeout)
        self.timings["lock"] = time.monotonic() - t0
        try:
            self._undo_leftovers()
            self.workdir.mkdir(parents=True, exist_ok=True)
            RUN_DIR.mkdir(parents=True, exist_ok=True)
            self._record(workdir=str(self.workdir), created=[str(d) for d in FIXED_DIRS if not d.exists()])
            step = time.monotonic()
            self._start_containerd()
            self.timings["containerd"] = time.monotonic() - step
            step = time.monotonic()
            self._import_pause()
            self.timings["pause image"] = time.monotonic() - step
            if self.images:
                self.load(self.images)
            step = time.monotonic()
            self._start_kubelet()
            self.timings["kubelet healthz"] = time.monotonic() - step
            step = time.monotonic()
            self.wait_for(self._ready, f"Node {self.name} Ready")
            self.timings["node ready"] = time.monotonic() - step
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop the kubelet, every container and containerd; unmount, restore the sysctls,
        remove the fixed paths, the work directory's containerd root and kubelet dir; unlock."""
        if self._lock_fd is None:
            return  # not started, or stopped already: the fixed paths may be another run's now
        t0 = time.monotonic()
        problems: list[str] = []
        try:
            kubelet = self.procs.pop("kubelet", None)
            if kubelet is not None:
                kubelet.stop()
            if "containerd" in self.procs:
                self._end_containers(problems)
                self.procs.pop("containerd").stop()
                # the Node would stay NotReady, its pods Unknown: gone, for whatever runs next
                with contextlib.suppress(Exception):  # the control plane may be gone already
                    self.cluster.kubectl_run(
                        "delete", "node", self.name, "--wait=false", "--ignore-not-found", timeout=20
                    )
            problems += self._cleanup(self._state())
        finally:
            self._unlock()
        self.timings["stop"] = time.monotonic() - t0
        if problems:
            raise NodeError("the real node did not stop cleanly:\n" + "\n".join(problems))

    def check_alive(self) -> None:
        for proc in self.procs.values():
            try:
                proc.check_alive()
            except ControlPlaneError as exc:
                raise NodeError(str(exc)) from None

    # -- containerd -------------------------------------------------------------------
    def ctr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr --namespace k8s.io ARGS...` against this node's containerd."""
        argv = [str(self.bin_dir / "ctr"), "--address", str(self.socket), "--namespace", "k8s.io", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
        return done

    def image_refs(self) -> list[str]:
        """Every image reference containerd's k8s.io namespace holds."""
        return self.ctr("images", "list", "--quiet").stdout.split()

    def tag_image(self, src: str, dst: str) -> str:
        """Give the image `src` a second reference `dst` (e.g. a "new" tag for a rollout)."""
        self.ctr("images", "tag", "--force", src, dst)
        return dst

    def load(self, images: Mapping[str, str]) -> None:
        """Copy images (name -> reference) from the test podman store into containerd: one
        docker-archive for all (shared layers written once), uncompressed (no gzip either side)."""
        refs = list(images.values())
        if not self.podman:
            raise NodeError("no podman command line to export images with")
        tar = self.workdir / f"images-{secrets.token_hex(4)}.tar"
        try:
            step = time.monotonic()
            argv = [*self.podman, "save", "--quiet", "--multi-image-archive", "--format", "docker-archive"]
            done = subprocess.run(
                [*argv, "-o", str(tar), *refs], capture_output=True, text=True, timeout=600, check=False
            )
            if done.returncode != 0:
                raise NodeError(
                    f"podman save {' '.join(refs)} exited {done.returncode}:\n{done.stderr[-3000:]}"
                )
            self.timings["podman save"] = self.timings.get("podman save", 0.0) + time.monotonic() - step
            step = time.monotonic()
            self.ctr("images", "import", "--snapshotter", "overlayfs", str(tar), timeout=900)
            self.timings["ctr import"] = self.timings.get("ctr import", 0.0) + time.monotonic() - step
        finally:
            tar.unlink(missing_ok=True)
        have = set(self.image_refs())
        missing = [ref for ref in refs if ref not in have]
        if missing:
            raise NodeError(f"containerd lacks {missing} after the import; it has {sorted(have)}")
        self.images.update(images)

    def _start_containerd(self) -> None:
        cni = self.workdir / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        # The CRI plugin reports the network "not ready" (and the kubelet the Node NotReady)
        # until it has a CNI config, even for host-network pods: a loopback-only network, so a
        # pod that is not host-network fails loudly and never gets an address.
        (cni / "10-loopback-only.conflist").write_text(
            '{"cniVersion": "1.0.0", "name": "downloader-loopback-only", "plugins": [{"type": "loopback"}]}\n'
        )
        config = self.workdir / "containerd.toml"
        config.write_text(self._containerd_config(cni))
        # the shim (containerd-shim-runc-v2) is found on PATH; `env` execs, so the PID (and the
        # parent-death signal) are containerd's own
        argv = [
            "env",
            f"PATH={self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            str(self.bin_dir / "containerd"),
            "--config",
            str(config),
        ]
        self.procs["containerd"] = proc = Proc("containerd", argv, self.logs["containerd"]).start()
        self._record(containerd_pid=proc.pid)
        self.wait_for(
            lambda: self.ctr("version", timeout=10, check=False).returncode == 0, "containerd's socket", 60
        )

    def _containerd_config(self, cni: Path) -> str:
        run = RUN_DIR
        return f"""# containerd of the Downloader test node (written by tests/support/node.py)
# version 4: the grpc/ttrpc addresses are plugin settings; a top-level [grpc] section would be
# ignored silently and containerd would serve on the machine's /run/containerd/containerd.sock
version = 4
root = '{self.containerd_root}'
state = '{run}/state'
imports = []
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.snapshotter.v1.blockfile', 'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs']

[debug]
  level = 'info'

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '{self.socket}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{self.socket}.ttrpc'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_REF}'
  [plugins.'io.containerd.cri.v1.runtime']
    disable_apparmor = true
    # CAP_SYS_RESOURCE may be missing from the bounding set (so on the machine this was made
    # on): no process may then lower its oom_score_adj below 0, and runc fails on the
    # sandbox's -998. Clamp scores to containerd's own.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_criu = false
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        disable_pause_image_pull = true
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{RUNC}'
          Root = '{run}/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{CNI_BIN_DIR}']
      conf_dir = '{cni}'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '{run}/s'
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"""

    def _import_pause(self) -> None:
        tar = pause_image.write(self.bin_dir / "pause", self.workdir / "pause.oci.tar", PAUSE_REF)
        self.ctr("images", "import", "--snapshotter", "overlayfs", str(tar))
        # pinned: the kubelet's image garbage collection never removes the sandbox image
        self.ctr("images", "label", PAUSE_REF, "io.cri-containerd.pinned=pinned")

    def _end_containers(self, problems: list[str]) -> None:
        """The containers outlive containerd (their shims are their parents): end them first."""
        try:
            for task in self.ctr("tasks", "list", "--quiet", timeout=30).stdout.split():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=30, check=False)
            deadline = time.monotonic() + 10
            while self._running_tasks() and time.monotonic() < deadline:
                time.sleep(0.2)
            for task in self.ctr("tasks", "list", "--quiet", timeout=30).stdout.split():
                self.ctr("tasks", "delete", "--force", task, timeout=30, check=False)
            for container in self.ctr("containers", "list", "--quiet", timeout=30).stdout.split():
                self.ctr("containers", "delete", container, timeout=30, check=False)
        except (NodeError, subprocess.TimeoutExpired) as exc:
            problems.append(f"ending the containers: {exc}")

    def _running_tasks(self) -> bool:
        listing = self.ctr("tasks", "list", timeout=30, check=False).stdout.splitlines()[1:]
        return any("RUNNING" in line for line in listing)

    # -- kubelet ----------------------------------------------------------------------
    def _start_kubelet(self) -> None:
        k = self.kubelet_dir
        for sub in ("pki", "root", "pod-logs"):
            (k / sub).mkdir(parents=True, exist_ok=True)
        self._client_certificate(k / "pki")
        ca = self.cluster.pki / "ca.crt"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "test", "cluster": {"server": self.cluster.server, "certificate-authority": str(ca)}}
            ],
            "users": [
                {
                    "name": "node",
                    "user": {
                        "client-certificate": str(k / "pki/client.crt"),
                        "client-key": str(k / "pki/client.key"),
                    },
                }
            ],
            "contexts": [{"name": "node", "context": {"cluster": "test", "user": "node"}}],
            "current-context": "node",
        }
        (k / "kubeconfig").write_text(json.dumps(kubeconfig, indent=2) + "\n")
        # RBAC alone authorizes in the test API server (no Node authorizer): the nodes' group
        # gets the built-in system:node role
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "downloader-test-nodes"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(binding))
        self.kubelet_port, self.healthz_port = free_port(), free_port()
        (k / "config.yaml").write_text(json.dumps(self._kubelet_config(ca), indent=2) + "\n")
        if "sysctls" not in self._state():
            self._record(sysctls={s: Path("/proc/sys", s).read_text().strip() for s in SYSCTLS})
        argv = [
            str(self.bin_dir / "kubelet"),
            f"--config={k / 'config.yaml'}",
            f"--kubeconfig={k / 'kubeconfig'}",
            f"--hostname-override={self.name}",
            f"--root-dir={k / 'root'}",
            f"--cert-dir={k / 'pki'}",
            f"--node-labels={','.join(f'{key}={value}' for key, value in self.labels.items())}",
            "--v=1",
        ]
        self.procs["kubelet"] = proc = Proc("kubelet", argv, self.logs["kubelet"]).start()
        self._record(kubelet_pid=proc.pid)
        self.wait_for(self._kubelet_healthy, "the kubelet's /healthz", 60)

    def _kubelet_config(self, ca: Path) -> dict[str, Any]:
        socket = f"unix://{self.socket}"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 (hybrid) hosts: kubelet >= 1.35 refuses them unless told; no systemd
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": socket,
            "imageServiceEndpoint": socket,
            "address": "127.0.0.1",
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            # the test API server calls the kubelet (logs, exec) without a client certificate
            # (tools/testbed/controlplane.py passes no --kubelet-client-certificate): anonymous,
            # on 127.0.0.1 only
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "registerWithTaints": self.taints,
            "failSwapOn": False,
            "cpuManagerPolicy": "none",
            "memoryManagerPolicy": "None",
            "topologyManagerPolicy": "none",
            "podLogsDir": str(self.kubelet_dir / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "clusterDomain": "cluster.local",
            # the images cannot be pulled again: never garbage-collect them, never evict for disk
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
            "maxPods": 50,
            "shutdownGracePeriod": "0s",
            # no KUBE-FIREWALL / KUBE-IPTABLES-HINT chains on the host (no kube-proxy here)
            "makeIPTablesUtilChains": False,
        }

    def _client_certificate(self, pki: Path) -> None:
        """A client certificate for system:node:<name> (group system:nodes), signed by the test CA."""
        ca_dir = self.cluster.pki
        openssl = shutil.which("openssl")
        if openssl is None:
            raise NodeError("openssl is not on PATH: scripts/bootstrap images installs it")
        ext = pki / "client.ext"
        ext.write_text("keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
        key, csr, crt = pki / "client.key", pki / "client.csr", pki / "client.crt"
        subject = f"/O=system:nodes/CN=system:node:{self.name}"
        request = ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        request += ["-subj", subject, "-keyout", str(key), "-out", str(csr)]
        # -set_serial, not -CAcreateserial: nothing is written into the control plane's pki
        sign = [
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_dir / "ca.crt"),
            "-CAkey",
            str(ca_dir / "ca.key"),
        ]
        sign += [
            "-set_serial",
            f"0x{secrets.token_hex(8)}",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        ]
        for args in (request, sign):
            argv = [openssl, *args]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise NodeError(f"{' '.join(argv[:3])} exited {done.returncode}:\n{done.stderr}")

    def _kubelet_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def node(self) -> dict[str, Any]:
        """The Node object, as the API server has it."""
        status, body = self.cluster.get(f"/api/v1/nodes/{self.name}")
        if status != 200 or not isinstance(body, dict):
            raise NodeError(f"GET node {self.name}: {status} {body}")
        return body

    def _ready(self) -> bool:
        status, node = self.cluster.get(f"/api/v1/nodes/{self.name}")
        if status != 200 or not isinstance(node, dict):
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if condition():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {name} ({path}):\n{tail(path, 25)}" for name, path in self.logs.items()
                )
                raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
            time.sleep(0.2)

    def log_tails(self, lines: int = 30) -> str:
        """The ends of the kubelet's and containerd's logs (the root conftest attaches them to
        a failed test's report)."""
        return "\n".join(f"--- {name} ({path}):\n{tail(path, lines)}" for name, path in self.logs.items())

    # -- the machine-wide lock and the record of host changes ---------------------------
    def _lock(self, timeout: float) -> None:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() > deadline:
                holder = Path(LOCK_PATH).read_text().strip()
                os.close(fd)
                raise NodeError(f"{LOCK_PATH} still held after {timeout:.0f}s (a real node of: {holder})")
            time.sleep(1)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} workdir {self.workdir}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((RUN_DIR / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return state

    def _record(self, **values: Any) -> None:
        """Note a host change in RUN_DIR/state.json (before it happens), for stop() or, when
        this run is killed, the next start()."""
        path = RUN_DIR / "state.json"
        state = {**self._state(), **values}
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)

    def _undo_leftovers(self) -> None:
        """A run killed before its stop() left its record: undo what it changed (lock held)."""
        state = self._state()
        if not state:
            return
        for key, exe in (("kubelet_pid", "kubelet"), ("containerd_pid", "containerd")):
            pid = state.get(key)
            if isinstance(pid, int) and pid in _pids_with(exe, ""):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        problems = self._cleanup(state)
        if problems:
            raise NodeError("a previous real node left state that cannot be undone:\n" + "\n".join(problems))

    def _cleanup(self, state: dict[str, Any]) -> list[str]:
        """Undo the host changes `state` records; returns what could not be undone."""
        problems: list[str] = []
        workdir = Path(state["workdir"]) if "workdir" in state else self.workdir
        # shims left over (containerd died first): ours run with our socket in their argv
        for pid in _pids_with("containerd-shim-runc-v2", f"-address {self.socket}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # containers a killed run's shims left running, by the kubelet's cgroup tree (in a normal
        # stop, already ended through containerd)
        trees = [
            t
            for t in [*Path("/sys/fs/cgroup").glob("*/kubepods"), Path("/sys/fs/cgroup/kubepods")]
            if t.is_dir()
        ]
        if _kill_cgroup_tasks(trees):
            time.sleep(0.5)
        # container rootfs (overlay), pod volumes (tmpfs), netns: deepest first
        for point in _mounts_under(workdir, RUN_DIR):
            done = subprocess.run(["umount", point], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                lazy = subprocess.run(["umount", "-l", point], capture_output=True, text=True, check=False)
                if lazy.returncode != 0:
                    problems.append(f"umount {point}: {done.stderr.strip()} / {lazy.stderr.strip()}")
        for name, value in (state.get("sysctls") or {}).items():
            path = Path("/proc/sys", name)
            try:
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
            except OSError as exc:
                problems.append(f"restoring sysctl {name}={value}: {exc}")
        # the kubelet's cgroup tree, emptied above
        for tree in trees:
            for directory in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                tree.rmdir()
        DEVICE_PLUGIN_SOCKET.unlink(missing_ok=True)
        for link in Path("/var/log/containers").glob("*.log"):
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(f"{workdir}/"):
                    link.unlink()
        for made in sorted(state.get("created") or [], key=len, reverse=True):
            with contextlib.suppress(OSError):
                Path(made).rmdir()  # only when empty: another kubelet's files are kept
        # the multi-GB containerd root and the kubelet's dir, once nothing is mounted in them
        for directory in (workdir / "containerd", workdir / "kubelet", RUN_DIR):
            if _mounts_under(directory):
                problems.append(f"kept {directory}: still mounted below it")
            else:
                shutil.rmtree(directory, ignore_errors=True)
                if directory.exists():
                    problems.append(f"could not remove {directory}")
        return problems
