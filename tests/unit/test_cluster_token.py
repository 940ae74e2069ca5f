"""The operator's login hands kopf the bare service-account token, whichever way the official
client's loaders wrote it (the in-cluster one as `bearer <token>`: sent as is, every call of a
real pod was refused with 401)."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader

from downloader.cluster.kube import bearer_token


def test_the_in_cluster_token_is_handed_over_bare(tmp_path: Path) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("eyJhbGciOi.payload.sig\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    configuration = client.Configuration()
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    InClusterConfigLoader(str(token), str(ca), environ=environ).load_and_set(configuration)
    assert bearer_token(configuration) == "eyJhbGciOi.payload.sig"


def test_kubeconfig_tokens_and_no_token() -> None:
    configuration = client.Configuration()
    configuration.api_key = {"authorization": "Bearer abc.def"}
    assert bearer_token(configuration) == "abc.def"
    configuration.api_key = {"BearerToken": "BEARER  xyz"}
    assert bearer_token(configuration) == "xyz"
    configuration.api_key = {}
    assert bearer_token(configuration) == ""
