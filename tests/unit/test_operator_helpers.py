"""The operator's pure helpers: `_contains` (is a write needed?) on kopf's read-only views and
on the empty fields the API server leaves out, and `index_deployment` / `_indexed` (the
watched copy of a worker Deployment). What the real API server stores and how often the
operator calls it: tests/k8s/test_operator_api_calls.py."""

from __future__ import annotations

from typing import Any

import kopf

from downloader.operator.handlers import _contains, _indexed, index_deployment

CONDITIONS = [{"type": "Ready", "status": "True", "reason": "WorkersReady"}]


def test_contains_reads_kopfs_read_only_view_of_a_status() -> None:
    status = kopf.Body({"status": {"readyWorkers": 1, "conditions": CONDITIONS, "extra": "x"}}).status
    assert not isinstance(status, dict)  # a Mapping view: taking it for "not a dict" wrote every round
    assert _contains(status, {"readyWorkers": 1, "conditions": CONDITIONS})
    assert not _contains(status, {"readyWorkers": 2, "conditions": CONDITIONS})
    assert not _contains(status, {"readyWorkers": 1, "conditions": [{**CONDITIONS[0], "status": "False"}]})
    assert not _contains(kopf.Body({}).status, {"readyWorkers": 1})


def test_contains_takes_an_empty_field_the_api_server_leaves_out_for_the_same() -> None:
    stored = {"name": "worker", "image": "w:1"}  # sent with `envFrom: []`, stored without it
    assert _contains(stored, {"name": "worker", "image": "w:1", "envFrom": [], "nodeSelector": {}})
    assert not _contains(stored, {"name": "worker", "envFrom": [{"configMapRef": {"name": "env"}}]})
    assert not _contains(stored, {"name": "worker", "image": ""})  # an empty string is a value


def test_contains_wants_lists_item_for_item() -> None:
    stored = {"containers": [{"name": "worker", "args": ["a"], "terminationMessagePolicy": "File"}]}
    assert _contains(stored, {"containers": [{"name": "worker", "args": ["a"]}]})
    assert not _contains(stored, {"containers": [{"name": "worker", "args": ["a", "b"]}]})
    assert not _contains(stored, {"containers": [{"name": "worker"}, {"name": "sidecar"}]})


def test_the_watched_copy_of_a_deployment_is_what_the_reconcile_reads() -> None:
    template: dict[str, Any] = {"metadata": {"labels": {"app": "w"}},
                                "spec": {"containers": [{"name": "worker", "image": "w:1"}]}}  # fmt: skip
    body = kopf.Body(
        {
            "metadata": {"name": "downloader-worker-shop", "resourceVersion": "7"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}}, "template": template},
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 3},
        }
    )
    indexed = index_deployment(name="downloader-worker-shop", spec=body.spec, status=body.status)
    copy = {"spec": {"replicas": 2, "template": template}, "status": {"readyReplicas": 1}}
    assert indexed == {"downloader-worker-shop": copy}
    template["spec"]["containers"][0]["image"] = "w:2"  # the body kopf passed on changes later
    assert indexed["downloader-worker-shop"]["spec"]["template"]["spec"]["containers"][0]["image"] == "w:1"
    # kopf's index: each key holds the values of the objects that gave it
    assert _indexed({"downloader-worker-shop": [copy]}, "downloader-worker-shop") is copy  # type: ignore[arg-type]
    assert _indexed({}, "downloader-worker-shop") is None  # type: ignore[arg-type]
    assert _indexed(None, "downloader-worker-shop") is None


def test_a_deployment_without_status_or_template_is_indexed_with_none() -> None:
    body = kopf.Body({"metadata": {"name": "d"}, "spec": {"replicas": 0}})
    assert index_deployment(name="d", spec=body.spec, status=body.status) == {
        "d": {"spec": {"replicas": 0, "template": {}}, "status": {"readyReplicas": None}}
    }
