"""The chart on a real node: `helm install` with the locally built images on a kubelet with
containerd (tests/node), every pod on the host network. A job POSTed to the api pod is
downloaded by a worker pod the operator made and its callback delivered by the notifier pod;
`helm test` runs its pod; a scale-down removes idle worker pods, never busy ones; a rollout of
the worker image drains, and no download is cut, repeated or lost."""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from support.kubetools import CHART, Kube, helm, wait_for
from support.procs import free_port, job_body
from support.servers import CallbackServer, FileServer

from downloader.cluster import planning
from downloader.store import Store, keys

pytestmark = [pytest.mark.k8s, pytest.mark.node]

RELEASE = "downloader"
WORKER_PODS = "app.kubernetes.io/component=worker"


def split_ref(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


@dataclass
class Release:
    """The chart installed on the real node, with what a test talks to."""

    kube: Kube
    api: str  # http://127.0.0.1:<port>
    files_dir: Path  # the hostPath volume behind the chart's files claim
    values: Path
    tmp: Path
    db: Store
    redis: redis.Redis

    def post(self, body: dict[str, Any]) -> str:
        answer = httpx.post(f"{self.api}/download", json=body, timeout=10, trust_env=False)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def try_post(self, body: dict[str, Any]) -> str | None:
        """`post`, or None while nothing listens (a refused connection sent nothing)."""
        try:
            return self.post(body)
        except httpx.ConnectError:
            return None

    def diagnosis(self) -> str:
        """Pods, events and every container's log tail: what a failed wait leaves to read."""
        parts = [self.kube.run("get", "pods,deployments,aggregations", "-o", "wide"),
                 self.kube.run("get", "events", "--sort-by=.lastTimestamp")[-4000:]]  # fmt: skip
        for pod in self.kube.items("pods"):
            name = pod["metadata"]["name"]
            try:
                parts.append(f"== {name}\n" + self.kube.run("logs", name, "--all-containers", "--tail=40"))
            except Exception as exc:  # a pod that never started has no log
                parts.append(f"== {name}: {exc}")
        return "\n".join(parts)

    def helm(self, *args: str) -> str:
        """helm against the release's namespace; a failure shows the pods, events and logs."""
        try:
            return helm(self.kube.cluster, self.tmp, *args, "-n", self.kube.namespace)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None

    def worker_hosts(self) -> set[str]:
        """The hosts (pod names) of the live workers' heartbeats."""
        return {json.loads(m)["host"] for m in self.redis.zrange(keys.instances("worker"), 0, -1)}

    def worker_pods(self, aggr_id: str) -> list[dict[str, Any]]:
        selector = f"{planning.AGGREGATION_LABEL}={planning.resource_name(aggr_id)}"
        return self.kube.items("pods", WORKER_PODS, selector)


def chart_values(node: Any, cluster: Any, redis_url: str, api_port: int, claim_volume: str) -> dict[str, Any]:
    """Every component on the real node's host network, with the images loaded into its
    containerd (never pulled), the test's Redis, and the Kubernetes API on 127.0.0.1."""
    api_repo, api_tag = split_ref(node.images["api"])
    worker_repo, worker_tag = split_ref(node.images["worker"])
    kube_api = urllib.parse.urlsplit(cluster.server)
    in_cluster = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                  {"name": "KUBERNETES_SERVICE_PORT", "value": str(kube_api.port)}]  # fmt: skip
    placement = {"nodeSelector": node.node_selector, "tolerations": node.tolerations, "hostNetwork": True}
    return {
        "api": {
            "image": {"repository": api_repo, "tag": api_tag, "pullPolicy": "Never"},
            "replicaCount": 1,
            "containerPort": api_port,
            "extraEnv": in_cluster,
            **placement,
            "podDisruptionBudget": {"enabled": False},
        },
        "worker": {
            "image": {"repository": worker_repo, "tag": worker_tag, "pullPolicy": "Never"},
            "metricsPort": 0,
            **placement,
        },
        "notifier": {"metricsPort": 0, **placement},
        "operator": {
            "intervalSeconds": 1,
            "livenessPort": free_port(),
            "metricsPort": 0,
            "extraEnv": in_cluster,
            **placement,
        },
        "redis": {"external": {"url": redis_url}},
        "storage": {
            "filesystem": {
                "persistentVolumeClaim": {
                    "enabled": True,
                    "storageClass": "-",
                    "volumeName": claim_volume,
                    "accessModes": ["ReadWriteOnce"],
                    "size": "1Gi",
                }
            }
        },
        "networkPolicy": {"enabled": False},
        "config": {
            "env": {"DOWNLOADER_ALLOW_PRIVATE_NETWORKS": "true", "DOWNLOADER_SHUTDOWN_GRACE_SECONDS": "25"}
        },
        "tests": {
            "image": {"repository": api_repo, "tag": api_tag, "pullPolicy": "Never"},
            "url": f"http://127.0.0.1:{api_port}/healthz",
            # The api image has python, not busybox's wget.
            "command": [
                "python",
                "-c",
                "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)",
            ],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
            **placement,
        },
    }


@pytest.fixture
def release_env() -> dict[str, str]:
    """Extra settings of a release (`config.env`); a test parametrizes it to change them."""
    return {}


@pytest.fixture
def release(
    cluster: Any,
    real_node: Any,
    namespace: str,
    redis_url: str,
    rdb: redis.Redis,
    tmp_path: Path,
    release_env: dict[str, str],
) -> Iterator[Release]:
    kube = Kube(cluster, namespace)
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    files_dir.chmod(0o777)  # the pods run as UID 10001
    volume = f"files-{namespace}"
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                         "hostPath": {"path": str(files_dir), "type": "Directory"}}}, tmp_path)  # fmt: skip
    api_port = free_port()
    values = tmp_path / "values.json"
    chosen = chart_values(real_node, cluster, redis_url, api_port, volume)
    chosen["config"]["env"].update(release_env)
    values.write_text(json.dumps(chosen))
    started = time.monotonic()
    helm(cluster, tmp_path, "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--wait",
         "--timeout", "180s")  # fmt: skip
    # With one host-network api pod and maxUnavailable 1, --wait may return before it is Ready.
    wait_for(lambda: len(kube.items("pods", f"app.kubernetes.io/instance={RELEASE}")) >= 3, 60, "the pods")
    kube.run(
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "--timeout=120s",
    )
    sys.stderr.write(
        f"\nhelm install and every pod Ready on the real node: {time.monotonic() - started:.1f}s\n"
    )
    db = Store.from_url(redis_url)
    yield Release(kube, f"http://127.0.0.1:{api_port}", files_dir, values, tmp_path, db, rdb)
    db.close()
    helm(cluster, tmp_path, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
    cluster.kubectl("delete", "pv", volume, "--wait=false")


def test_a_worker_pod_downloads_and_the_notifier_pod_calls_back(
    release: Release,
    files: FileServer,
    callbacks: CallbackServer,
    cluster: Any,
    namespace: str,
    real_node: Any,
) -> None:
    running = release.kube.items("pods", f"app.kubernetes.io/instance={RELEASE}")
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in running}
    assert {"api", "notifier", "operator"} <= components.keys()
    for pod in components.values():
        assert pod["spec"]["nodeName"] == "127.0.0.1" and pod["status"]["phase"] == "Running"

    job_id = release.post(job_body(files.url("tiny.png"), "real.node", callbacks.url, limit=2))
    try:
        payload = callbacks.wait_for(job_id, timeout=120)  # Aggregation, Deployment, pod start, download
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{release.diagnosis()}") from None
    assert payload["success"] is True and payload["error"] == "", payload
    stored = release.files_dir / job_id[:3] / job_id
    assert stored.read_bytes() == files.content("tiny.png")

    (pod,) = release.worker_pods("real.node")
    assert pod["spec"]["nodeName"] == "127.0.0.1" and pod["spec"]["hostNetwork"] is True
    image = pod["status"]["containerStatuses"][0]["image"]
    assert image.endswith(split_ref(real_node.images["worker"])[1]), image
    # The worker lists itself by its pod's name (DOWNLOADER_POD_NAME), which leases are matched to.
    hosts = wait_for(lambda: release.worker_hosts(), 15, "the worker's heartbeat")
    assert pod["metadata"]["name"] in hosts

    out = release.helm("test", RELEASE, "--timeout", "120s")
    assert "Phase:          Succeeded" in out or "Succeeded" in out, out


@dataclass
class Watch:
    """What a scale-down or rollout did to busy pods, sampled while it runs: every pod seen
    terminating, and those that held leases (downloads in flight) when it was seen so."""

    terminating: set[str]
    terminating_while_busy: dict[str, int]
    max_replicas: int = 0

    @classmethod
    def start(cls) -> Watch:
        return cls(set(), {})

    def sample(self, release: Release, aggr_id: str) -> None:
        pods = release.worker_pods(aggr_id)
        self.max_replicas = max(self.max_replicas, len(pods))
        busy = release.db.downloads_per_host(aggr_id)
        for pod in pods:
            name = pod["metadata"]["name"]
            if pod["metadata"].get("deletionTimestamp"):
                self.terminating.add(name)
                if busy.get(name) and name not in self.terminating_while_busy:
                    self.terminating_while_busy[name] = busy[name]


def aggregation(aggr_id: str, limit: int, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "downloader.io/v1alpha1", "kind": "Aggregation",
            "metadata": {"name": planning.resource_name(aggr_id)},
            "spec": {"id": aggr_id, "limit": limit, "workerConcurrency": 1, "idleSeconds": 120, **spec}}  # fmt: skip


def assert_each_downloaded_once_and_delivered(
    files: FileServer, callbacks: CallbackServer, jobs: dict[str, str]
) -> None:
    """Every job's file was requested once and served whole, and its callback came once."""
    for job_id, tag in jobs.items():
        seen = [r for r in files.seen() if r.query.get("job") == tag]
        assert len(seen) == 1, (tag, seen)
        assert seen[0].served is not None and not seen[0].aborted, seen[0]
        delivered = callbacks.delivered(job_id)
        assert len(delivered) == 1 and delivered[0].payload["success"] is True, delivered


def test_a_scale_down_removes_idle_worker_pods_and_never_a_busy_one(
    release: Release, files: FileServer, callbacks: CallbackServer
) -> None:
    """Three pods for three downloads of 4, 12 and 20 s: as each ends, the Deployment loses a
    pod, and the one removed is always one without a download (pod-deletion-cost)."""
    aggr_id = "scale.down"
    release.kube.apply(aggregation(aggr_id, 3), release.tmp)
    holds = {"short": 4, "middle": 12, "long": 20}
    jobs = {release.post(job_body(files.url("tiny.png", hold=hold, job=tag), aggr_id, callbacks.url, limit=3)): tag
            for tag, hold in holds.items()}  # fmt: skip
    watch = Watch.start()
    deadline = time.monotonic() + 150
    while len(callbacks.all()) < len(jobs) and time.monotonic() < deadline:
        watch.sample(release, aggr_id)
        time.sleep(0.2)
    assert_each_downloaded_once_and_delivered(files, callbacks, jobs)
    assert watch.max_replicas == 3, watch
    assert len(watch.terminating) >= 1, watch  # at least one scale-down happened while downloads ran
    assert watch.terminating_while_busy == {}, watch
    costs = [e for e in release.kube.items("events") if e["reason"] == "Scaled"]
    assert costs, "no Scaled event"


@pytest.mark.parametrize("release_env", [{"DOWNLOADER_SHUTDOWN_GRACE_SECONDS": "2"}])
def test_a_busy_pod_that_must_go_gives_its_download_back_without_an_attempt(
    release: Release, files: FileServer, callbacks: CallbackServer
) -> None:
    """Both pods busy when the limit drops from 2 to 1: one must go. Past its drain (2 s here)
    it gives its job back to the queue uncounted, and the other pod downloads it next; with
    max_retries 0 a counted attempt would have failed the job."""
    aggr_id = "must.go"
    release.kube.apply(aggregation(aggr_id, 2), release.tmp)
    jobs = {release.post(job_body(files.url("tiny.png", hold=10, job=f"m{n}"), aggr_id, callbacks.url, limit=2,
                                  max_retries=0)): f"m{n}" for n in range(2)}  # fmt: skip
    wait_for(lambda: sorted(release.db.downloads_per_host(aggr_id).values()) == [1, 1], 90,
             "a download in each of two pods")  # fmt: skip
    name = planning.resource_name(aggr_id)
    release.kube.run("patch", f"aggregation/{name}", "--type=merge", "-p", '{"spec":{"limit":1}}')
    payloads = {job_id: callbacks.wait_for(job_id, timeout=120) for job_id in jobs}
    assert all(p["success"] is True for p in payloads.values()), payloads
    fetches = sorted(len([r for r in files.seen() if r.query.get("job") == tag]) for tag in jobs.values())
    assert fetches == [1, 2], fetches  # the kept pod's once; the given-back one cut, then again whole
    assert len(release.worker_pods(aggr_id)) == 1
    assert all(len(callbacks.for_job(job_id)) == 1 for job_id in jobs)


def test_a_rollout_of_the_worker_image_drains_and_loses_or_repeats_nothing(
    release: Release, files: FileServer, callbacks: CallbackServer, real_node: Any
) -> None:
    """Downloads of 8 s in flight, and more jobs arriving, while `helm upgrade` changes the
    worker image (the api, notifier and operator roll too: the config changed): the old worker
    pods finish their downloads before they exit (SIGTERM drain), the new pods take the rest;
    every file is fetched once, whole, and every callback comes once."""
    aggr_id = "roll.out"
    release.kube.apply(aggregation(aggr_id, 2), release.tmp)
    jobs: dict[str, str] = {}

    def post(n: int) -> None:
        body = job_body(files.url("tiny.png", hold=8, job=f"r{n}"), aggr_id, callbacks.url, limit=2)
        # The single host-network api pod is replaced too: a client retries a refused connection.
        job_id = wait_for(lambda: release.try_post(body), 60, "the api to take a job")
        jobs[job_id] = f"r{n}"

    for n in range(4):
        post(n)
    old = wait_for(lambda: release.worker_pods(aggr_id), 90, "worker pods")
    wait_for(lambda: release.db.downloads_per_host(aggr_id), 60, "downloads in flight in the worker pods")
    repository, tag = split_ref(real_node.images["worker"])
    new_ref = f"{repository}:rollout-{tag}"
    real_node.tag_image(real_node.images["worker"], new_ref)
    release.helm(
        "upgrade", RELEASE, str(CHART), "--reuse-values", "--set-string", f"worker.image.tag=rollout-{tag}"
    )
    watch = Watch.start()
    n = 4
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        watch.sample(release, aggr_id)
        pods = release.worker_pods(aggr_id)
        rolled = pods and all(p["spec"]["containers"][0]["image"] == new_ref for p in pods)
        if n < 10:
            post(n)
            n += 1
        if rolled and n >= 10 and len(callbacks.all()) >= len(jobs):
            break
        time.sleep(0.5)
    current = release.worker_pods(aggr_id)
    assert current and all(p["spec"]["containers"][0]["image"] == new_ref for p in current), (
        release.diagnosis()
    )
    assert not {p["metadata"]["name"] for p in old} & {p["metadata"]["name"] for p in current}
    # An old pod was stopped in the middle of a download, and still served it whole, once.
    assert watch.terminating_while_busy, watch
    assert_each_downloaded_once_and_delivered(files, callbacks, jobs)
