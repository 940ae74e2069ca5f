"""The built images run the service: api, worker and notifier in containers (host network) on
a redis-server of the test's, all on 127.0.0.1.

A job POSTed to the api container is downloaded by the worker container from the test's file
server, stored in the containers' shared /data (a host folder owned by UID 10001, as a
volume would be) and its HTTP callback delivered by the notifier container to the test's
receiver. The api image's own command (0.0.0.0:8000) passes its HEALTHCHECK, in a network of
its own so that port 8000 of the shared host is not needed. SIGTERM to the worker container
(PID 1 is `downloader`, so the signal reaches it directly) drains a running download, as the
README promises: it completes, is stored and delivered, the container exits 0,
and a job still queued behind it is left for the next worker, which delivers it.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from support.podman_images import RUN_OPTIONS, Images, Podman, print_figures
from support.procs import BASE_SETTINGS, DOWNLOAD_URL_BASE, aggr_id, free_port, job_body
from support.servers import CallbackServer, FileServer, wait_until

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

UID = GID = 10001
START_TIMEOUT = 60.0  # a container's start on a loaded 2-core host, interpreter included
GRACE_SECONDS = 30  # DOWNLOADER_SHUTDOWN_GRACE_SECONDS, and podman stop's wait before SIGKILL


class Containers:
    """The containers of one test: started detached on the host network with the settings of
    the test's processes (tests/support/procs.py) and /data shared; removed at the end,
    their logs attached to the report of a test that fails."""

    def __init__(self, podman: Podman, data: Path, redis_url: str, **settings: str) -> None:
        self.podman = podman
        self.data = data
        self.prefix = f"dl-test-{uuid.uuid4().hex[:8]}"
        self.env = {
            **BASE_SETTINGS,
            "DOWNLOADER_REDIS_URL": redis_url,
            "DOWNLOADER_STORAGE_ROOT": "/data/files",
            "DOWNLOADER_TMP_DIR": "/data/tmp",
            "DOWNLOADER_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            **settings,
        }
        self.names: list[str] = []
        self.db = redis.Redis.from_url(redis_url, decode_responses=True)

    def start(self, role: str, image: str, *args: str) -> str:
        name = f"{self.prefix}-{role}-{len(self.names)}"
        env = [f"--env={k}={v}" for k, v in self.env.items()]
        self.podman(
            *("run", "--detach", "--name", name, "--network", "host", *RUN_OPTIONS),
            *("--volume", f"{self.data}:/data", *env, image, *args),
        )
        self.names.append(name)
        return name

    def logs(self, name: str) -> str:
        done = self.podman("logs", name, check=False)
        return done.stdout + done.stderr

    def running(self, name: str) -> bool:
        state = self.podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        return state.stdout.strip() == "true"

    def wait_ready(self, name: str, ready: Callable[[], bool]) -> None:
        """Until `ready()`; a container that exits meanwhile fails at once, with its log."""
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            assert self.running(name), f"{name} exited:\n{self.logs(name)[-3000:]}"
            assert time.monotonic() < deadline, f"{name} did not start:\n{self.logs(name)[-3000:]}"
            time.sleep(0.2)

    def serving(self, name: str, log_word: str, stats_key: str) -> bool:
        """A worker or notifier serves when it has said so and published its stats key."""
        return log_word in self.logs(name) and bool(self.db.exists(stats_key))

    def exit_code(self, name: str, timeout: float) -> int:
        done = self.podman("wait", name, timeout=timeout)
        return int(done.stdout.strip())

    def log_tails(self) -> str:
        """For the failure report (tests/conftest.py): the end of each container's log."""
        return "".join(f"---- {name} ----\n{self.logs(name)[-4000:]}\n" for name in self.names)

    def close(self) -> None:
        for name in self.names:
            self.podman("rm", "--force", "--time", "5", name, check=False)
        self.db.close()


@pytest.fixture
def containers(images: Images, redis_url: str, tmp_path: Path) -> Iterator[Containers]:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, UID, GID)  # what a volume of the chart's securityContext would hold
    group = Containers(images.podman, data, redis_url)
    yield group
    group.close()


def api_container(group: Containers, images: Images) -> tuple[str, str]:
    port = free_port()
    name = group.start("api", images.api, "api", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    group.wait_ready(name, lambda: _answers(f"{url}/hb"))
    return name, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def worker_container(group: Containers, images: Images) -> str:
    name = group.start("worker", images.worker)  # the image's own CMD: `worker`
    group.wait_ready(name, lambda: group.serving(name, "serving", "stats:processor"))
    return name


def notifier_container(group: Containers, images: Images) -> str:
    name = group.start("notifier", images.worker, "notifier")
    group.wait_ready(name, lambda: group.serving(name, "delivering", "stats:notifier"))
    return name


def stored(group: Containers, job_id: str) -> bytes:
    return (group.data / "files" / job_id[:3] / job_id).read_bytes()


def post(api_url: str, body: dict[str, object]) -> str:
    resp = httpx.post(f"{api_url}/download", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def test_api_worker_and_notifier_containers_download_and_deliver(
    images: Images, containers: Containers, files: FileServer, callbacks: CallbackServer
) -> None:
    start = time.monotonic()
    _, api_url = api_container(containers, images)
    notifier_container(containers, images)
    worker_container(containers, images)
    started = time.monotonic() - start
    url = files.url("sample-1.jpg")
    content = files.content("sample-1.jpg")

    job_id = post(api_url, job_body(url, aggr_id("img"), callbacks.url, mime_type="image/jpeg", extra="x"))
    payload = callbacks.wait_for(job_id, timeout=60)
    delivered = time.monotonic() - start - started

    assert payload["success"] is True and payload["error"] == "", payload
    assert (payload["job_id"], payload["extra"], payload["resource_url"]) == (job_id, "x", url)
    assert payload["sha256"] == hashlib.sha256(content).hexdigest() and payload["size"] == len(content)
    assert payload["content_type"] == "image/jpeg"
    assert payload["download_url"] == f"{DOWNLOAD_URL_BASE}/{job_id[:3]}/{job_id}"
    assert stored(containers, job_id) == content, "written by UID 10001 into the shared /data"
    assert (containers.data / "files").stat().st_uid == UID
    print_figures(
        "containers: api + worker + notifier",
        {"three containers serving": f"{started:.1f} s", "job posted to callback": f"{delivered:.2f} s"},
    )


def test_sigterm_to_the_worker_container_drains_the_running_download(
    images: Images, containers: Containers, files: FileServer, callbacks: CallbackServer
) -> None:
    _, api_url = api_container(containers, images)
    notifier_container(containers, images)
    worker = worker_container(containers, images)
    aggr = aggr_id("drain")
    content = files.content("sample-1.jpg")
    slow = files.url("sample-1.jpg", delay=0.25, chunk=4096)  # about 2 s of streaming
    # limit 1: the second job waits in the queue while the first downloads
    running = post(api_url, job_body(slow, aggr, callbacks.url, limit=1, max_retries=0))
    wait_until(lambda: files.seen("sample-1.jpg"), 30, "the download to start")
    queued = post(api_url, job_body(files.url("tiny.png"), aggr, callbacks.url, limit=1, max_retries=0))

    signalled = time.monotonic()
    containers.podman("kill", "--signal", "TERM", worker)
    code = containers.exit_code(worker, timeout=GRACE_SECONDS + 30)
    drained = time.monotonic() - signalled

    assert code == 0, f"the worker exited {code}:\n{containers.logs(worker)[-3000:]}"
    (request,) = files.seen("sample-1.jpg")
    assert request.ended is not None and request.status == 200, "the download ran to its end"
    payload = callbacks.wait_for(running, timeout=30)
    assert payload["success"] is True and payload["attempts"] == 1, payload
    assert stored(containers, running) == content
    assert files.seen("tiny.png") == [], "a draining worker starts nothing new"
    assert callbacks.for_job(queued) == []

    worker_container(containers, images)  # the next worker: nothing was lost
    later = callbacks.wait_for(queued, timeout=60)
    assert later["success"] is True and later["attempts"] == 1, later
    assert stored(containers, queued) == files.content("tiny.png")
    assert [len(callbacks.delivered(j)) for j in (running, queued)] == [1, 1], "each delivered once"
    print_figures("SIGTERM to the worker container", {"signal to exit 0": f"{drained:.2f} s"})


def test_api_image_command_passes_its_healthcheck(images: Images, containers: Containers) -> None:
    """The image's CMD (0.0.0.0:8000) and HEALTHCHECK (127.0.0.1:8000/healthz, no Redis round
    trip), run by podman as a runtime would; --network none: the container's own loopback."""
    name = f"{containers.prefix}-api-healthcheck"
    containers.podman("run", "--detach", "--name", name, "--network", "none", *RUN_OPTIONS, images.api)
    containers.names.append(name)
    containers.wait_ready(
        name, lambda: containers.podman("healthcheck", "run", name, check=False).returncode == 0
    )
    assert containers.podman("healthcheck", "run", name, check=False).stdout.strip() in {"", "healthy"}
    containers.podman("stop", "--time", str(GRACE_SECONDS), name)
    assert containers.exit_code(name, timeout=30) == 0, "SIGTERM: drained and exited 0"
