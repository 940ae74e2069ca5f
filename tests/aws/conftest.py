"""Fixtures of the AWS tests: one moto server for the session, fake credentials, and a fresh
bucket or queue per test (unique names, so tests never see each other's objects).

`s3` and `sqs` are the tests' own boto3 clients, used to look at what the product did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3.session
import pytest
from support.moto_server import MotoServer, unique_name

TEST_REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials through the standard chain, and nothing of the machine's AWS set-up:
    no profiles or config files, no instance metadata lookups (only 127.0.0.1 is reachable)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3(moto: MotoServer, aws_env: None) -> Any:
    return boto3.session.Session().client("s3", region_name=TEST_REGION, endpoint_url=moto.url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = unique_name("bucket")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def sqs(moto: MotoServer, aws_env: None) -> Any:
    return boto3.session.Session().client("sqs", region_name=TEST_REGION, endpoint_url=moto.url)


@pytest.fixture
def queue_url(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName=unique_name("queue"))["QueueUrl"])
