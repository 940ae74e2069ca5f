"""Signed callbacks through real processes: the headers on HTTP callbacks and Kafka-ready
messages, verified with the README's receiver example (run as written), and key rotation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from support.procs import Stack, aggr_id, job_body
from support.servers import CallbackServer, FileServer

from downloader.delivery import signing

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_verifier() -> Callable[[str, bytes, list[str]], bool]:
    """The `verify` function of the README's "Verifying callbacks" example, executed as is."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- verify-callback -->\s*```python\n(.*?)```", text, re.S)
    assert found, "the README lost its verify-callback example"
    code = found.group(1)
    assert len(code.strip().splitlines()) <= 12, "the example should stay short"
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # our own README, run on purpose
    verify = namespace["verify"]
    assert callable(verify)
    return verify  # type: ignore[return-value]


def test_callbacks_are_signed_with_every_active_key_and_verify_with_the_readme_example(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three(DOWNLOADER_CALLBACK_SIGNING_KEYS="old-secret,new-secret")
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    callbacks.wait_for(job_id)
    received = callbacks.delivered(job_id)[0]
    headers = {k.lower(): v for k, v in received.headers.items()}

    assert headers["x-downloader-delivery"] == f"{job_id}.1"
    header = headers["x-downloader-signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64},v1=[0-9a-f]{64}", header)
    verify = readme_verifier()
    assert verify(header, received.raw, ["new-secret"])  # a receiver that rotated already
    assert verify(header, received.raw, ["old-secret"])  # one that has not yet
    assert not verify(header, received.raw, ["someone-else"])
    assert not verify(header, received.raw.replace(b'"success":true', b'"success":false'), ["new-secret"])
    assert signing.verify(header, received.raw, ["new-secret"])  # the library agrees


def test_without_keys_callbacks_carry_only_the_delivery_id(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, _, _ = stack.all_three()
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    callbacks.wait_for(job_id)
    headers = {k.lower(): v for k, v in callbacks.delivered(job_id)[0].headers.items()}
    assert headers["x-downloader-delivery"] == f"{job_id}.1"
    assert "x-downloader-signature" not in headers


def test_the_signing_keys_never_reach_the_logs(
    stack: Stack, files: FileServer, callbacks: CallbackServer
) -> None:
    api, worker, notifier = stack.all_three(DOWNLOADER_CALLBACK_SIGNING_KEYS="sup3r-s3cret-k3y",
                                            DOWNLOADER_LOG_LEVEL="DEBUG")  # fmt: skip
    job_id = api.post_job(job_body(files.url("tiny.png"), aggr_id(), callbacks.url))
    callbacks.wait_for(job_id)
    for proc in (api, worker, notifier):
        assert proc.output(), f"{proc.name} logged nothing: the check would prove nothing"
        assert "sup3r-s3cret-k3y" not in proc.output()
