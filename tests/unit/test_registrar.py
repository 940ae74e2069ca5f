"""The API's cache of aggregation ids whose Aggregation it created (no cluster involved:
`wants` is the pure part; creation itself is tested on the control plane)."""

from __future__ import annotations

from typing import Any, cast

from downloader.cluster.kube import Cluster, Registrar, has_access
from downloader.config.settings import Settings


def registrar(**kwargs: Any) -> Registrar:
    return Registrar(cast(Cluster, None), **kwargs)


def test_an_id_is_wanted_once_while_its_creation_runs() -> None:
    r = registrar(retry_after=30)
    assert r.wants("shop", now=0)
    assert not r.wants("shop", now=1)
    assert r.wants("other", now=1)


def test_a_failed_creation_is_wanted_again_after_the_cool_down() -> None:
    r = registrar(retry_after=30)
    assert r.wants("shop", now=0)
    assert not r.wants("shop", now=29)
    assert r.wants("shop", now=31)


def test_the_cache_is_bounded_and_forgets_the_least_recent() -> None:
    r = registrar(capacity=2, retry_after=1000)
    for aggr, now in (("a", 0), ("b", 1), ("a", 2), ("c", 3)):
        r.wants(aggr, now=now)
    assert not r.wants("a", now=4)  # used recently: kept
    assert r.wants("b", now=5)  # pushed out by c


def test_without_kubeconfig_or_service_account_there_is_no_cluster_access(monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not has_access(Settings(kubeconfig=""))
    assert has_access(Settings(kubeconfig="/some/kubeconfig"))
