"""Real Redis processes for the failover tests: a primary, a replica and three Sentinels.

Everything listens on free 127.0.0.1 ports and keeps its files (config, data, log) under the
test's tmp dir. Sentinels run as `redis-server <conf> --sentinel` (the same binary as
`redis-sentinel`, so no extra package is needed). Anything that does not come up fails the
test with the tail of its log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from support.procs import free_port, stop_process, tail

MASTER_NAME = "mymaster"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is not on PATH (scripts/bootstrap installs it)", pytrace=False)
    return found


class RedisProc:
    """One redis-server (or Sentinel) process; restartable on the same port and directory."""

    def __init__(self, name: str, workdir: Path, args: Sequence[str] = (), port: int | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.port = port or free_port()
        self.args = list(args)
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                *self.args]  # fmt: skip

    def start(self, timeout: float = 20.0) -> RedisProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )
        self.wait(lambda c: bool(c.ping()), "to answer PING", timeout)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2, socket_connect_timeout=1)

    def wait(self, check: object, what: str, timeout: float = 20.0) -> None:
        """Poll `check(client)` until true; fail with the log tail on timeout or death."""
        client = self.client()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    self.fail(f"exited with {self.proc.returncode} while waiting {what}")
                try:
                    if check(client):  # type: ignore[operator]
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.fail(f"timed out after {timeout:g}s waiting {what}")

    def fail(self, why: str) -> None:
        pytest.fail(
            f"{self.name} (port {self.port}) {why}; its log ends with:\n{tail(self.log)}", pytrace=False
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        stop_process(self.proc, timeout=15)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tails(self, lines: int = 30) -> str:
        return f"--- {self.name} (port {self.port}) ---\n{tail(self.log, lines)}"


class Sentinel(RedisProc):
    def __init__(self, name: str, workdir: Path, primary_port: int) -> None:
        super().__init__(name, workdir)
        self.conf = workdir / f"{name}.conf"
        # Sentinel rewrites its own config file (known replicas, other sentinels, epochs).
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )

    def argv(self) -> list[str]:
        return [_binary(), str(self.conf), "--sentinel"]

    def primary(self) -> tuple[str, int] | None:
        with self.client() as c:
            found = c.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        return (str(found[0]), int(found[1])) if found else None


class Cluster:
    """Primary + replica + three Sentinels watching them as `mymaster`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary = RedisProc("primary", workdir / "primary", ["--save", "", "--appendonly", "no"])
        self.replica = RedisProc(
            "replica",
            workdir / "replica",
            ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(self.primary.port)],
        )
        self.sentinels = [
            Sentinel(f"sentinel-{i}", workdir / f"sentinel-{i}", self.primary.port) for i in range(3)
        ]
        self.killed_at: float | None = None

    @property
    def sentinel_list(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> Cluster:
        self.primary.start()
        self.replica.start()
        self.replica.wait(lambda c: c.info("replication").get("master_link_status") == "up",
                          "for the replication link", 20)  # fmt: skip
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_agreed(("127.0.0.1", self.primary.port))
        return self

    def wait_agreed(self, primary: tuple[str, int], timeout: float = 30.0) -> None:
        """Every Sentinel names `primary`, knows the replica and both other Sentinels (a
        failover needs a quorum that can elect a leader)."""
        for sentinel in self.sentinels:
            sentinel.wait(
                lambda c: (
                    _names(c, primary)
                    and len(c.execute_command("SENTINEL", "sentinels", MASTER_NAME))
                    == len(self.sentinels) - 1
                    and len(c.execute_command("SENTINEL", "replicas", MASTER_NAME)) >= 1
                ),
                f"to agree on primary {primary[0]}:{primary[1]}",
                timeout,
            )

    def kill_primary(self) -> tuple[str, int]:
        """SIGKILL the current primary; returns its address."""
        address = ("127.0.0.1", self.primary.port)
        self.primary.kill()
        self.killed_at = time.monotonic()
        return address

    def wait_for_failover(self, old: tuple[str, int], timeout: float = 30.0) -> tuple[str, int]:
        """Until every Sentinel names a new primary that answers as master; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = {s.primary() for s in self.sentinels if s.alive}
            if len(named) == 1 and (new := named.pop()) not in (None, old):
                assert new is not None
                with redis.Redis(host=new[0], port=new[1], decode_responses=True, socket_timeout=2) as c:
                    if c.info("replication").get("role") == "master":
                        self.primary, self.replica = self.replica, self.primary
                        return new
            time.sleep(0.1)
        pytest.fail(
            "no failover within {:g}s; sentinel logs:\n{}".format(
                timeout, "\n".join(f"--- {s.name}\n{tail(s.log, 20)}" for s in self.sentinels)
            ),
            pytrace=False,
        )

    def restart_old_primary_as_replica(self) -> None:
        """Bring the killed node back as a replica of the new primary (what an operator, or
        Sentinel itself after a while, would do), so WAIT has a replica to count again."""
        old = self.replica  # swapped by wait_for_failover
        old.args = ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(self.primary.port)]
        old.start()
        # Settled once either node is a synced replica of the other: on a loaded host the
        # sentinels may fail over once more (they judged the new primary down) and promote
        # the node just restarted; the roles are taken as they end up.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for primary, replica in ((self.primary, old), (old, self.primary)):
                if _replicates(replica, primary):
                    self.primary, self.replica = primary, replica
                    return
            if old.proc is not None and old.proc.poll() is not None:
                old.fail(f"exited with {old.proc.returncode} while waiting to sync")
            time.sleep(0.1)
        old.fail("timed out after 30s waiting for either node to be a synced replica of the other")

    def stop(self) -> None:
        for proc in [*self.sentinels, self.replica, self.primary]:
            proc.terminate()

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(p.log_tails(lines) for p in [self.primary, self.replica, *self.sentinels])


def _replicates(replica: RedisProc, primary: RedisProc) -> bool:
    """`replica` is a replica of `primary` with its link up."""
    client = replica.client()
    try:
        info = client.info("replication")
    except redis.RedisError:
        return False
    finally:
        client.close()
    return (
        info.get("role") == "slave"
        and info.get("master_link_status") == "up"
        and int(info.get("master_port", 0)) == primary.port
    )


def _names(client: redis.Redis, primary: tuple[str, int]) -> bool:
    found = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
    return bool(found) and (str(found[0]), int(found[1])) == primary
