"""Helpers over rendered manifests (parsed YAML documents) for the chart tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Doc = dict[str, Any]

WORKLOADS = ("Deployment", "StatefulSet")


def kinds(docs: list[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    """The one object of `kind` whose name ends with `name_suffix`."""
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    names = [d["metadata"]["name"] for d in of_kind(docs, kind)]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix} among {names}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(name, pod spec) of every pod the chart runs: workloads' templates and bare Pods."""
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"]


def containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(pod name, pod spec, container) of every container, init containers included."""
    for name, spec in pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield name, spec, c


def config(docs: list[Doc]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", "-config")["data"])


def rules(doc: Doc) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """A Role's rules as sorted (apiGroups, resources, verbs) tuples."""
    return sorted(
        (tuple(sorted(r["apiGroups"])), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])))
        for r in doc["rules"]
    )
