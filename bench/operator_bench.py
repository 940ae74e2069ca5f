#!/usr/bin/env python3
"""Operator benchmark: N Aggregations applied at once -> worker Deployments -> Ready pods.

It starts everything itself, on 127.0.0.1 and under one temporary directory:

* a private `redis-server` (from PATH; `--save '' --appendonly no`);
* the control plane of `tools/testbed/controlplane.py`, the one the k8s tests start (etcd +
  kube-apiserver, controller-manager, scheduler, and kwok playing the kubelet of one fake node),
  with the CRDs of `crds/` applied;
  the fake node's capacity is raised so that N worker pods fit (`--no-node-capacity` keeps
  the harness' 110 pods / 32 CPUs);
* a fresh namespace, and the product's `downloader operator` (from the venv) watching it,
  ready once its liveness endpoint answers.

Then it queues one job per aggregation straight in Redis (`ZADD jobs:<id> <now> job<i>`:
backlog 1, so the plan wants 1 worker) and creates the N Aggregation resources (spec: id,
limit 4) with ONE `kubectl apply -f` of a List. t0 is taken just before kubectl starts.
Every `--poll` seconds (0.2) it LISTs the namespace's Deployments and Aggregations and
records, per aggregation, when its Aggregation was first seen, when its Deployment
`downloader-worker-<name>` first existed, when that Deployment first had
`status.readyReplicas >= 1` (kwok makes the pod Running and Ready), and when the
Aggregation's own status first said `readyWorkers >= 1`. It reports p50/p95/max of each
milestone (seconds after t0), when all aggregations had reached it, the operator's CPU
seconds and peak RSS (from /proc), the control plane's start time and the CPU of every
process; then, for `--steady` seconds with everything Ready, the operator's CPU at rest.

Run it with the project's venv, from a directory other than the repository root:

    cd /tmp && $REPO/.venv/bin/python $REPO/bench/operator_bench.py --count 200 --json /tmp/op.json

Exit status: 0 when every aggregation reached Ready (Deployment readyReplicas >= 1) with
the expected 1 replica, 1 when not (timeout, wrong replicas, the operator died), 2 when the
setup failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hostinfo import (
    VENV_BIN,
    calibrate,
    cpu_model,
    free_port,
    host_busy_seconds,
    interrupt_on_signals,
    percentile,
    proc_cpu_seconds,
    proc_status,
    self_cpu,
    set_pdeathsig,
    write_result,
)

GROUP, VERSION, PLURAL = "downloader.io", "v1alpha1", "aggregations"
WORKER_PREFIX = "downloader-worker-"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
#: What each worker pod requests (the product's default DOWNLOADER_WORKER_RESOURCES):
#: used to size the fake node so that N pods fit.
POD_CPU_MILLI, POD_MEMORY_MI = 250, 256


# --- small helpers ------------------------------------------------------------------------


def milestone(times: list[float | None], count: int) -> dict[str, Any]:
    """p50/p95/max of the seconds after t0 at which each aggregation reached a milestone,
    over those that reached it; `all_s` is when the last of the `count` did (None if not all)."""
    got = [t for t in times if t is not None]
    if not got:
        return {"reached": 0, "of": count, "p50_s": None, "p95_s": None, "max_s": None, "all_s": None}
    return {
        "reached": len(got),
        "of": count,
        "min_s": round(min(got), 3),
        "p50_s": round(percentile(got, 50), 3),
        "p95_s": round(percentile(got, 95), 3),
        "max_s": round(max(got), 3),
        "mean_s": round(statistics.fmean(got), 3),
        "all_s": round(max(got), 3) if len(got) == count else None,
    }


def _children_cpu() -> float:
    """CPU of waited-for children: the kubectl runs of the benchmark."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tail(path: Path, size: int = 4000) -> str:
    try:
        data = path.read_bytes()[-size:]
    except OSError:
        return "(no log)"
    return data.decode("utf-8", "replace")


class SetupError(RuntimeError):
    pass


class TooManyRequests(RuntimeError):
    pass


class ApiConnection:
    """One keep-alive HTTPS connection to the API server, from the kubeconfig's first cluster
    and user (CA data + bearer token, as the test control plane writes it)."""

    def __init__(self, kubeconfig: Path) -> None:
        text = kubeconfig.read_text()
        try:
            doc = json.loads(text)  # what the test control plane writes
        except ValueError:
            import yaml  # type: ignore[import-untyped]  # PyYAML, a dependency of `kubernetes`

            doc = yaml.safe_load(text)
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self.headers = {"Authorization": f"Bearer {user['token']}"}
        self.conn: http.client.HTTPSConnection | None = None

    def get(self, path: str, accept: str = "application/json") -> tuple[int, bytes]:
        for attempt in (1, 2):  # one retry on a connection the server closed
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=30
                )
            try:
                self.conn.request("GET", path, headers={**self.headers, "Accept": accept})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str, accept: str = "application/json") -> Any:
        status, body = self.get(path, accept)
        if status == 429:  # "storage is (re)initializing" (a new CRD's watch cache), overload
            raise TooManyRequests(body[:200].decode(errors="replace"))
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


# --- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="downloader-opbench-"))
        self.redis_popen: subprocess.Popen[bytes] | None = None
        self.operator_popen: subprocess.Popen[bytes] | None = None
        self.plane: Any = None
        self.k8s: Any = None  # testbed.controlplane (tools/testbed), shared with tests/k8s
        self.redis: Any = None
        self.api: ApiConnection | None = None
        self.namespace = ""
        self.ids = [f"bench-{i:0{max(3, len(str(args.count - 1)))}d}" for i in range(args.count)]
        self.names = list(self.ids)  # DNS-clean ids: the product keeps them as object names
        self.timings: dict[str, float] = {}
        self.timeline: list[dict[str, Any]] = []
        self.notes: list[str] = []

    # --- setup ---

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not on PATH")
        self.redis_port = free_port()
        with (self.tmp / "redis.log").open("wb") as log:
            argv = [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.tmp)]  # fmt: skip
            self.redis_popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=set_pdeathsig,
            )
        import redis

        self.redis = redis.Redis(port=self.redis_port, decode_responses=True, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.redis.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.redis_popen.poll() is not None:
                    raise SetupError("redis-server did not start: " + tail(self.tmp / "redis.log")) from None
                time.sleep(0.05)
        self.redis_version = self.redis.info("server").get("redis_version", "?")

    def start_control_plane(self) -> None:
        # tools/ is on sys.path through hostinfo: the launcher the k8s tests use too, one copy
        from testbed import controlplane as k8s

        self.k8s = k8s
        t = time.monotonic()
        try:
            binary = k8s.build()
        except k8s.ControlPlaneError as exc:
            raise SetupError(f"the control plane could not be built: {exc}") from exc
        self.timings["build_or_cache_s"] = round(time.monotonic() - t, 2)
        self.binary = binary
        t = time.monotonic()
        self.plane = k8s.ControlPlane(self.tmp / "k8s", binary)
        try:
            self.plane.start()
        except k8s.ControlPlaneError as exc:
            raise SetupError(f"the control plane did not start: {exc}") from exc
        self.timings["control_plane_start_s"] = round(time.monotonic() - t, 2)
        for key, value in (getattr(self.plane, "timings", None) or {}).items():
            self.timings[f"control_plane_{key}_s"] = round(float(value), 2)
        self.api = ApiConnection(Path(self.plane.kubeconfig))

    def size_node(self) -> None:
        """Raise the fake node's pods/cpu/memory so that every worker pod fits (kwok keeps a
        node's own allocatable and capacity; the harness gives 110 pods and 32 CPUs)."""
        node_name = getattr(self.k8s, "NODE_NAME", "kwok-node")
        node = json.loads(self.plane.kubectl("get", "node", node_name, "-o", "json"))
        allocatable = node.get("status", {}).get("allocatable", {})
        self.node_before = dict(allocatable)
        if self.args.no_node_capacity:
            return
        count = self.args.count
        pods = max(110, count + 50)
        cpu = max(32, math.ceil(count * POD_CPU_MILLI / 1000) + 8)
        memory_gi = max(256, math.ceil(count * POD_MEMORY_MI / 1024) + 16)
        wanted = {"pods": str(pods), "cpu": str(cpu), "memory": f"{memory_gi}Gi"}
        patch = {"status": {"allocatable": wanted, "capacity": wanted}}
        self.plane.kubectl("patch", "node", node_name, "--subresource=status", "--type=merge",
                           "-p", json.dumps(patch))  # fmt: skip
        self.node_after = wanted

    def create_namespace(self) -> None:
        create = getattr(self.k8s, "create_namespace", None)
        if create is not None:
            self.namespace = create(self.plane, prefix="bench")
            return
        self.namespace = f"bench-{os.getpid()}"  # fallback if the helper is gone
        self.plane.kubectl("create", "namespace", self.namespace)
        deadline = time.monotonic() + 60
        while self.plane.kubectl_run("-n", self.namespace, "get", "serviceaccount", "default").returncode:
            if time.monotonic() > deadline:
                raise SetupError(f"no default ServiceAccount in {self.namespace}")
            time.sleep(0.2)

    def operator_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOWNLOADER_")}
        for name in ("NO_PROXY", "no_proxy"):
            env[name] = ",".join(filter(None, [env.get(name, ""), "127.0.0.1", "localhost"]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(
            {
                "DOWNLOADER_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "DOWNLOADER_KUBECONFIG": str(self.plane.kubeconfig),
                "DOWNLOADER_KUBE_NAMESPACE": self.namespace,
                "DOWNLOADER_OPERATOR_LIVENESS_PORT": str(self.liveness_port),
                "DOWNLOADER_WORKER_IMAGE": "downloader-worker:bench",
                "DOWNLOADER_LOG_LEVEL": self.args.log_level,
            }
        )
        if self.args.interval is not None:
            env["DOWNLOADER_OPERATOR_INTERVAL_SECONDS"] = f"{self.args.interval:g}"
        for item in self.args.env:
            name, _, value = item.partition("=")
            env[name] = value
        self.product_env = {k: v for k, v in env.items() if k.startswith("DOWNLOADER_")}
        return env

    def start_operator(self) -> None:
        self.liveness_port = free_port()
        env = self.operator_env()
        self.operator_log = self.tmp / "operator.log"
        t = time.monotonic()
        with self.operator_log.open("wb") as log:
            self.operator_popen = subprocess.Popen(
                [str(VENV_BIN / "downloader"), "operator"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.tmp,  # not the repository root
                start_new_session=True,
                preexec_fn=set_pdeathsig,
            )
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 60
        while True:
            if self.operator_popen.poll() is not None:
                raise SetupError(
                    f"the operator exited with {self.operator_popen.returncode}:\n{tail(self.operator_log)}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError), opener.open(url, timeout=1) as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SetupError(f"the operator's {url} did not answer in 60 s:\n{tail(self.operator_log)}")
            time.sleep(0.1)
        self.timings["operator_live_s"] = round(time.monotonic() - t, 2)

    # --- measurement ---

    def aggregation_list(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Aggregation",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "spec": {"id": aggr_id, "limit": self.args.limit},
                }
                for aggr_id, name in zip(self.ids, self.names, strict=True)
            ],
        }

    def queue_jobs(self) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for i, aggr_id in enumerate(self.ids):
            pipe.zadd(f"jobs:{aggr_id}", {f"job{i}": now})
        pipe.execute()

    def list_state(self, kind: str) -> dict[str, tuple[int | None, int | None]]:
        """One LIST of the namespace's Deployments or Aggregations: name -> (a, b), where for a
        Deployment a = status.readyReplicas and b = spec.replicas, and for an Aggregation
        a = status.readyWorkers and b = status.workers (None: not set).

        By default the server prints a Table (`as=Table`, `includeObject=None`): the printer
        columns only, a few hundred bytes per object. `--poll-format json` LISTs the full
        objects instead (kubectl get -o json's cost: ~10x more for the API server and us)."""
        if kind == "deployments":
            path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        else:
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        out: dict[str, tuple[int | None, int | None]] = {}
        assert self.api is not None
        if self.args.poll_format == "json":
            for item in self.api.get_json(path).get("items") or []:
                name = item["metadata"]["name"]
                status, spec = item.get("status") or {}, item.get("spec") or {}
                if kind == "deployments":
                    out[name] = (int(status.get("readyReplicas") or 0), spec.get("replicas"))
                else:
                    out[name] = (status.get("readyWorkers"), status.get("workers"))
            return out
        table = self.api.get_json(path + "?includeObject=None", accept=TABLE)
        columns = [c["name"].lower() for c in table.get("columnDefinitions") or []]
        for row in table.get("rows") or []:
            cells = dict(zip(columns, row.get("cells") or [], strict=False))
            name = str(cells["name"])
            if kind == "deployments":  # READY is "<readyReplicas>/<spec.replicas>"
                ready_s, _, wanted_s = str(cells.get("ready") or "0/0").partition("/")
                out[name] = (int(ready_s or 0), int(wanted_s) if wanted_s.isdigit() else None)
            else:
                ready_w, workers = cells.get("ready"), cells.get("workers")
                out[name] = (
                    int(ready_w) if isinstance(ready_w, int | float) else None,
                    int(workers) if isinstance(workers, int | float) else None,
                )
        return out

    def resource_versions(self, kind: str) -> dict[str, str]:
        """name -> metadata.resourceVersion of the namespace's Deployments or Aggregations."""
        assert self.api is not None
        group = "apis/apps/v1" if kind == "deployments" else f"apis/{GROUP}/{VERSION}"
        try:
            items = self.api.get_json(f"/{group}/namespaces/{self.namespace}/{kind}").get("items") or []
        except Exception:  # a figure, not a check
            return {}
        return {i["metadata"]["name"]: i["metadata"].get("resourceVersion", "") for i in items}

    def operator_events(self) -> dict[str, int]:
        """Events on the Aggregations, by reason (the operator's Created/Scaled/...)."""
        assert self.api is not None
        try:
            items = self.api.get_json(f"/api/v1/namespaces/{self.namespace}/events").get("items") or []
        except Exception:  # a figure, not a check
            return {}
        out: dict[str, int] = {}
        for e in items:
            if (e.get("involvedObject") or {}).get("kind") == "Aggregation":
                key = str(e.get("reason"))
                out[key] = out.get(key, 0) + int(e.get("count") or 1)
        return dict(sorted(out.items()))

    def apiserver_requests(self) -> dict[str, float]:
        """apiserver_request_total from the API server's /metrics, as "VERB resource[/sub] code",
        and its etcd writes (etcd_requests_total), as "etcd <operation> <type>"."""
        assert self.api is not None
        try:
            status, body = self.api.get("/metrics", accept="text/plain")
        except OSError:
            return {}
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("etcd_requests_total{"):  # the API server's storage calls
                labels_text, _, value = line[len("etcd_requests_total{") :].rpartition("} ")
                labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
                if labels.get("operation") in ("create", "update", "delete", "GuaranteedUpdate"):
                    key = f"etcd {labels['operation']} {labels.get('type') or labels.get('resource') or '?'}"
                    out[key] = out.get(key, 0.0) + float(value)
                continue
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, _, value = line[len("apiserver_request_total{") :].rpartition("} ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            resource = labels.get("resource") or labels.get("subresource") or "?"
            if labels.get("resource") and labels.get("subresource"):
                resource += "/" + labels["subresource"]
            key = f"{labels.get('verb')} {resource} {labels.get('code')}"
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {
            "operator": self.operator_popen.pid if self.operator_popen else None,
            "redis-server": self.redis_popen.pid if self.redis_popen else None,
        }
        for name, proc in (getattr(self.plane, "procs", None) or {}).items():
            out[name] = getattr(proc, "pid", None)
        return out

    def cpu_snapshot(self) -> dict[str, float | None]:
        snap = {name: proc_cpu_seconds(pid) for name, pid in self.pids().items()}
        snap["benchmark"] = self_cpu()
        snap["kubectl"] = _children_cpu()
        return snap

    def run(self) -> dict[str, Any]:
        a = self.args
        count = a.count
        self.calibration = [calibrate()]
        t_setup = time.monotonic()
        self.start_redis()
        self.start_control_plane()
        self.size_node()
        self.create_namespace()
        self.start_operator()
        self.timings["setup_total_s"] = round(time.monotonic() - t_setup, 2)
        operator = self.operator_popen
        assert operator is not None
        op_pid = operator.pid
        time.sleep(a.settle)  # let the operator finish its first adoption round and watches
        self.operator_cpu_at_idle_start = proc_cpu_seconds(op_pid)

        manifest = self.tmp / "aggregations.json"
        manifest.write_text(json.dumps(self.aggregation_list()))
        kubectl = str(getattr(self.k8s, "KUBECTL", VENV_BIN / "kubectl"))
        argv = [kubectl, "--kubeconfig", str(self.plane.kubeconfig), "-n", self.namespace,
                "apply", "-f", str(manifest)]  # fmt: skip
        apply_out = self.tmp / "apply.out"

        seen_aggr: dict[str, float] = {}
        handled: dict[str, float] = {}  # the operator wrote status (status.workers set)
        status_ready: dict[str, float] = {}  # status.readyWorkers >= 1
        deployed: dict[str, float] = {}
        ready: dict[str, float] = {}
        replicas: dict[str, int] = {}
        list_ms: list[float] = []
        errors: list[str] = []
        too_many = 0  # LISTs answered 429

        requests_before = self.apiserver_requests()
        cpu_before = self.cpu_snapshot()
        busy_before = host_busy_seconds()
        self.queue_jobs()
        t0 = time.monotonic()
        with apply_out.open("wb") as out:
            applier = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.k8s.child_environ() if hasattr(self.k8s, "child_environ")
                                       else None)  # fmt: skip
        apply_done: float | None = None
        deadline = t0 + a.timeout
        next_sample = 0.0
        all_ready_at: float | None = None
        status_deadline: float | None = None
        operator_died = False
        while True:
            poll_start = time.monotonic()
            now = poll_start - t0
            if apply_done is None and applier.poll() is not None:
                apply_done = now
            # each object's time is when the first LIST that showed it was sent
            for kind in ("deployments", "aggregations"):
                sent = time.monotonic()
                try:
                    state = self.list_state(kind)
                except TooManyRequests:  # e.g. the new CRD's watch cache is initializing
                    too_many += 1
                    continue
                except Exception as exc:  # the apiserver is overloaded: note it, keep polling
                    errors.append(f"{sent - t0:.1f}s: LIST {kind}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                list_ms.append((time.monotonic() - sent) * 1000)
                at = sent - t0
                for name, (ready_n, wanted) in state.items():
                    if kind == "deployments":
                        name = name.removeprefix(WORKER_PREFIX)
                        deployed.setdefault(name, at)
                        replicas[name] = wanted if wanted is not None else -1
                        if (ready_n or 0) >= 1:
                            ready.setdefault(name, at)
                    else:
                        seen_aggr.setdefault(name, at)
                        if wanted is not None:
                            handled.setdefault(name, at)
                        if (ready_n or 0) >= 1:
                            status_ready.setdefault(name, at)
            if poll_start >= next_sample:
                next_sample = poll_start + 1.0
                self.timeline.append(
                    {
                        "t": round(now, 2),
                        "aggregations": len(seen_aggr),
                        "deployments": len(deployed),
                        "ready": len(ready),
                        "status_ready": len(status_ready),
                        "operator_cpu_s": proc_cpu_seconds(op_pid),
                        "operator_rss_kb": proc_status(op_pid).get("VmRSS"),
                    }
                )
            if operator.poll() is not None:
                operator_died = True
                errors.append(f"{now:.1f}s: the operator exited with {operator.returncode}")
                break
            if all_ready_at is None and len(ready) >= count and apply_done is not None:
                all_ready_at = now
                # the Aggregations' status catches up on the operator's refresh: wait for it a little
                interval = a.interval if a.interval is not None else 5.0
                status_deadline = time.monotonic() + 3 * interval + 10
            if all_ready_at is not None and (
                len(status_ready) >= count or time.monotonic() > (status_deadline or 0)
            ):
                break
            if time.monotonic() > deadline:
                errors.append(f"timed out after {a.timeout:g}s")
                break
            time.sleep(max(0.0, a.poll - (time.monotonic() - poll_start)))
        t_end = time.monotonic()
        if applier.poll() is None:
            applier.wait(60)
            apply_done = time.monotonic() - t0
        cpu_after = self.cpu_snapshot()
        busy_after = host_busy_seconds()
        window = t_end - t0
        requests_window = _diff(self.apiserver_requests(), requests_before)
        events = self.operator_events()

        # --- the operator at rest: every Aggregation Ready, only the refreshes run ---
        steady: dict[str, Any] = {}
        if a.steady > 0 and not operator_died and all_ready_at is not None:
            rv0 = {k: self.resource_versions(k) for k in ("aggregations", "deployments")}
            r0 = self.apiserver_requests()
            c0, b0, s0 = proc_cpu_seconds(op_pid), host_busy_seconds(), time.monotonic()
            cp0 = self.cpu_snapshot()
            time.sleep(a.steady)
            c1, b1, s1 = proc_cpu_seconds(op_pid), host_busy_seconds(), time.monotonic()
            cp1 = self.cpu_snapshot()
            r1 = self.apiserver_requests()
            rv1 = {k: self.resource_versions(k) for k in ("aggregations", "deployments")}
            if c0 is not None and c1 is not None:
                steady = {
                    "seconds": round(s1 - s0, 1),
                    "operator_cores": round((c1 - c0) / (s1 - s0), 3),
                    "operator_cpu_ms_per_aggregation_per_s": round((c1 - c0) / (s1 - s0) / count * 1000, 3),
                    "cores_by_process": {
                        n: round(((cp1.get(n) or 0) - (cp0.get(n) or 0)) / (s1 - s0), 3)
                        for n in cp1
                        if cp1.get(n) is not None and cp0.get(n) is not None
                    },
                    "host_busy_cores": round((b1 - b0) / (s1 - s0), 2),
                    # objects written (resourceVersion changed) during the window: etcd writes
                    "objects_written": {
                        k: sum(1 for n, v in rv1[k].items() if rv0[k].get(n) not in (None, v)) for k in rv1
                    },
                    # includes the /metrics GETs of this benchmark (2), nothing else of ours
                    "apiserver_requests_per_s": {
                        k: round(v / (s1 - s0), 2) for k, v in _diff(r1, r0).items()
                    },
                }
        self.calibration.append(calibrate())

        # --- per aggregation ---
        per: list[dict[str, Any]] = []
        for name in self.names:
            per.append(
                {
                    "name": name,
                    "aggregation_seen_s": _r(seen_aggr.get(name)),
                    "operator_status_s": _r(handled.get(name)),
                    "deployment_s": _r(deployed.get(name)),
                    "ready_s": _r(ready.get(name)),
                    "status_ready_s": _r(status_ready.get(name)),
                    "replicas": replicas.get(name),
                }
            )
        seen_to_deploy = [deployed[n] - seen_aggr[n] for n in self.names if n in deployed and n in seen_aggr]
        deploy_to_ready = [ready[n] - deployed[n] for n in self.names if n in ready and n in deployed]
        wrong_replicas = sorted(n for n, r in replicas.items() if r != 1)
        apply_text = apply_out.read_text(errors="replace")
        apply_verbs: dict[str, int] = {}
        for line in apply_text.splitlines():
            m = re.match(r"^aggregation\.downloader\.io/\S+ (\w+)", line)
            if m:
                apply_verbs[m.group(1)] = apply_verbs.get(m.group(1), 0) + 1
        if apply_verbs.get("created", 0) != count:
            self.notes.append(
                f"kubectl apply: {apply_verbs} (an Aggregation not 'created' by the apply was made "
                "before it, e.g. by the operator's adoption of jobs:<id>)"
            )
        stray = sorted(set(deployed) - set(self.names))

        cpu = {
            n: round((cpu_after.get(n) or 0) - (cpu_before.get(n) or 0), 2)
            for n in cpu_after
            if cpu_after.get(n) is not None and cpu_before.get(n) is not None
        }
        total_cpu = {n: cpu_after.get(n) for n in cpu_after}
        processes: dict[str, Any] = {}
        for name, pid in self.pids().items():
            st = proc_status(pid)
            processes[name] = {
                "pid": pid,
                "cpu_s_window": cpu.get(name),
                "cpu_s_since_start": _r(total_cpu.get(name), 2),
                "cores_window": round(cpu[name] / window, 3) if name in cpu and window > 0 else None,
                "peak_rss_mb": round(st["VmHWM"] / 1024, 1) if "VmHWM" in st else None,
                "rss_mb_end": round(st["VmRSS"] / 1024, 1) if "VmRSS" in st else None,
                "threads": st.get("Threads"),
            }
        for name in ("benchmark", "kubectl"):
            processes[name] = {"cpu_s_window": cpu.get(name), "note": "this script" if name == "benchmark"
                               else "kubectl apply (and other kubectl runs) of this script"}  # fmt: skip
        own = sum(cpu.get(n, 0) for n in cpu)
        host_busy = (busy_after - busy_before) / window if window > 0 else None
        log_text = self.operator_log.read_text(errors="replace")
        log_summary = summarize_log(log_text)

        ok = (
            not operator_died
            and len(ready) >= count
            and not wrong_replicas
            and all(n in ready for n in self.names)
        )
        op = processes["operator"]
        return {
            "benchmark": "operator",
            "params": {
                "count": count,
                "limit": a.limit,
                "interval_s": a.interval,
                "interval_effective_s": a.interval if a.interval is not None else 5.0,
                "poll_s": a.poll,
                "poll_format": a.poll_format,
                "settle_s": a.settle,
                "timeout_s": a.timeout,
                "steady_s": a.steady,
                "log_level": a.log_level,
                "env": self.product_env,
                "node_allocatable_before": self.node_before,
                "node_allocatable_after": getattr(self, "node_after", None),
            },
            "host": {
                "cpus": os.cpu_count(),
                "cpu_model": cpu_model(),
                "python": platform.python_version(),
                "redis": self.redis_version,
                "kubernetes": getattr(self.k8s, "K8S_VERSION", "?"),
                "control_plane_binary": str(self.binary),
                "calibration_ms_before_after": self.calibration,
                "busy_cores_all": _r(host_busy, 2),
                "busy_cores_of_other_processes": _r(
                    (host_busy - own / window) if host_busy is not None and window > 0 else None, 2
                ),
                "loadavg": os.getloadavg(),
            },
            "timings": self.timings,
            "results": {
                "ok": ok,
                "apply_s": _r(apply_done),
                "aggregation_seen": milestone([seen_aggr.get(n) for n in self.names], count),
                "operator_status_written": milestone([handled.get(n) for n in self.names], count),
                "deployment_created": milestone([deployed.get(n) for n in self.names], count),
                "deployment_ready": milestone([ready.get(n) for n in self.names], count),
                "aggregation_status_ready": milestone([status_ready.get(n) for n in self.names], count),
                "seen_to_deployment_s": _spread(seen_to_deploy),
                "deployment_to_ready_s": _spread(deploy_to_ready),
                "wrong_replicas": wrong_replicas,
                "stray_deployments": stray,
                "apply_output": apply_verbs,
                "apply_exit_code": applier.returncode,
                "apply_other_lines": [
                    ln[:300] for ln in apply_text.splitlines() if not ln.endswith(" created")
                ][:20],
                "list_latency_ms": _spread(list_ms, scale=1),
                "lists": len(list_ms),
                "lists_answered_429": too_many,
                "apiserver_requests_window": requests_window,
                "events_on_aggregations": events,
                "errors": errors,
                "notes": self.notes,
            },
            "operator": {
                "cpu_s_startup_to_idle": _r(self.operator_cpu_at_idle_start, 2),
                "cpu_s_window": op["cpu_s_window"],
                "cpu_ms_per_aggregation": round(op["cpu_s_window"] / count * 1000, 1)
                if op["cpu_s_window"] is not None
                else None,
                "cores_window": op["cores_window"],
                "peak_rss_mb": op["peak_rss_mb"],
                "rss_mb_end": op["rss_mb_end"],
                "threads": op["threads"],
                "steady": steady,
                "log": log_summary,
            },
            "processes": processes,
            "window_s": round(window, 2),
            "timeline": self.timeline,
            "per_aggregation": per,
        }

    # --- teardown ---

    def cleanup(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.operator_popen is not None and self.operator_popen.poll() is None:
            self.operator_popen.terminate()
            try:
                self.operator_popen.wait(20)
            except subprocess.TimeoutExpired:
                self.operator_popen.kill()
                self.operator_popen.wait(5)
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.plane is not None:
            with contextlib.suppress(Exception):
                self.plane.stop()
        if self.redis_popen is not None and self.redis_popen.poll() is None:
            self.redis_popen.terminate()
            try:
                self.redis_popen.wait(10)
            except subprocess.TimeoutExpired:
                self.redis_popen.kill()
                self.redis_popen.wait(5)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        if self.args.keep:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counters that moved, largest first."""
    moved = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}
    return dict(sorted(moved.items(), key=lambda kv: -kv[1]))


def _spread(values: list[float], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {}
    v = [x * scale for x in values]
    return {
        "p50": round(percentile(v, 50), 3),
        "p95": round(percentile(v, 95), 3),
        "max": round(max(v), 3),
    }


def summarize_log(text: str) -> dict[str, Any]:
    """Counts of what matters in the operator's log, and its first few problems."""
    lines = text.splitlines()
    problems = [
        ln for ln in lines
        if re.search(r"\b(ERROR|WARNING|CRITICAL)\b|Traceback|TemporaryError|PermanentError", ln)
    ]  # fmt: skip
    return {
        "lines": len(lines),
        "problems": len(problems),
        "first_problems": [ln[:400] for ln in problems[:8]],
        "handler_succeeded": sum("succeeded" in ln for ln in lines),
        "handler_failed": sum("failed" in ln.lower() and "Handler" in ln for ln in lines),
    }


def print_summary(r: dict[str, Any]) -> None:
    p, res, op, host = r["params"], r["results"], r["operator"], r["host"]
    interval = p["interval_s"] if p["interval_s"] is not None else "5 (default)"
    print(
        f"\noperator benchmark: {p['count']} Aggregations, limit {p['limit']}, operator interval {interval} s"
    )
    t = r["timings"]
    print(
        f"  control plane up in {t.get('control_plane_start_s')} s "
        f"(readyz {t.get('control_plane_readyz_s')} s), "
        f"operator live in {t.get('operator_live_s')} s; kubectl apply took {res['apply_s']} s"
    )
    print(f"  {'seconds after t0':<34}{'p50':>8}{'p95':>8}{'max':>8}{'all':>8}  reached")
    rows = (
        ("Aggregation seen", "aggregation_seen"),
        ("operator wrote status", "operator_status_written"),
        ("Deployment exists", "deployment_created"),
        ("Deployment readyReplicas >= 1", "deployment_ready"),
        ("Aggregation status readyWorkers", "aggregation_status_ready"),
    )
    for label, key in rows:
        m = res[key]
        cells = "".join(
            f"{'-' if m.get(k) is None else m[k]:>8}" for k in ("p50_s", "p95_s", "max_s", "all_s")
        )
        print(f"  {label:<34}{cells}  {m['reached']}/{m['of']}")
    print(
        f"  seen -> Deployment: {res['seen_to_deployment_s']}; "
        f"Deployment -> Ready: {res['deployment_to_ready_s']}"
    )
    print(
        f"  operator: {op['cpu_s_window']} CPU-s in the {r['window_s']} s window "
        f"({op['cpu_ms_per_aggregation']} ms per Aggregation, {op['cores_window']} cores), "
        f"{op['cpu_s_startup_to_idle']} CPU-s to start; "
        f"peak RSS {op['peak_rss_mb']} MB, {op['threads']} threads"
    )
    if op["steady"]:
        s = op["steady"]
        print(
            f"  operator at rest ({s['seconds']} s, all Ready): {s['operator_cores']} cores "
            f"= {s['operator_cpu_ms_per_aggregation_per_s']} ms/s per Aggregation"
        )
    req = res["apiserver_requests_window"]
    count = p["count"]
    keys = ("GET deployments 404", "POST deployments 201", "POST deployments 409", "GET deployments 200",
            "PATCH deployments 200", "PATCH aggregations 200", "PATCH aggregations/status 200")  # fmt: skip
    print("  API calls per Aggregation in the window: " + ", ".join(
        f"{k} {req.get(k, 0) / count:.2f}" for k in keys
    ))  # fmt: skip
    print(f"  events on the Aggregations: {res['events_on_aggregations']}")
    if op["steady"]:
        s = op["steady"]
        rates = s["apiserver_requests_per_s"]
        top = ", ".join(f"{k} {v}" for k, v in list(rates.items())[:4])
        print(f"  at rest: API requests/s {top}; objects written in {s['seconds']} s: {s['objects_written']}")
        print(f"  at rest: cores {s['cores_by_process']}")
    procs = ", ".join(
        f"{n} {v['cpu_s_window']}" for n, v in r["processes"].items() if v["cpu_s_window"] is not None
    )
    print(f"  CPU-s in the window: {procs}")
    print(
        f"  host: calibration {host['calibration_ms_before_after']} ms, busy {host['busy_cores_all']} cores, "
        f"others {host['busy_cores_of_other_processes']}"
    )
    print(f"  operator log: {op['log']['lines']} lines, {op['log']['problems']} warnings/errors")
    for line in op["log"]["first_problems"][:4]:
        print(f"    {line[:200]}")
    for line in res["errors"] + res["notes"]:
        print(f"  ! {line}")
    if res["wrong_replicas"]:
        print(f"  ! Deployments without exactly 1 replica: {res['wrong_replicas'][:10]}")
    print(f"  {'OK' if res['ok'] else 'NOT OK'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1, help="Aggregations created at once (default 1)")
    ap.add_argument("--limit", type=int, default=4, help="spec.limit of each Aggregation (default 4)")
    ap.add_argument(
        "--interval", type=float, default=None,
        help="DOWNLOADER_OPERATOR_INTERVAL_SECONDS (default: unset, the product's 5 s)",
    )  # fmt: skip
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between LISTs (default 0.2)")
    ap.add_argument(
        "--poll-format", choices=("table", "json"), default="table",
        help="LIST as server-side Tables (default: cheap) or full JSON objects (kubectl get -o json)",
    )  # fmt: skip
    ap.add_argument("--timeout", type=float, default=300.0, help="give up after this long (s)")
    ap.add_argument(
        "--settle", type=float, default=2.0,
        help="seconds between the operator's liveness and t0 (its first adoption round, watches)",
    )  # fmt: skip
    ap.add_argument(
        "--steady", type=float, default=15.0,
        help="then measure the operator's CPU at rest for this long (0: skip)",
    )  # fmt: skip
    ap.add_argument("--log-level", default="INFO", help="DOWNLOADER_LOG_LEVEL of the operator (INFO)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra operator env")
    ap.add_argument(
        "--no-node-capacity", action="store_true",
        help="keep the fake node's 110 pods / 32 CPUs (N > 110 workers then stay Pending)",
    )  # fmt: skip
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, kubeconfig, etcd)")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    bench = Bench(args)
    result: dict[str, Any] | None = None
    try:
        result = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if result is None or not result["results"]["ok"]:
            log = getattr(bench, "operator_log", None)
            if log is not None:
                print(f"--- operator log (tail) ---\n{tail(log)}", file=sys.stderr)
        bench.cleanup()
    print_summary(result)
    write_result(args.json, result)
    return 0 if result["results"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
