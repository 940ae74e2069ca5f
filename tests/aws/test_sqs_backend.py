"""SqsBackend against moto's server (the message arrives whole, failures say which queue and
why), and its pure parts: the region of a queue URL, headers as message attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.moto_server import MotoServer, free_port, unique_name

from downloader.config.settings import Settings
from downloader.delivery import aws
from downloader.delivery.notifying import Message, encode
from downloader.errors import NotificationError, UnknownDestination

PAYLOAD = {
    "success": True,
    "error": "",
    "extra": "Καλημέρα",
    "image_size": "10x10",
    "resource_url": "https://host/a.png",
    "download_url": "http://localhost/foo/6QE/6QEywYsd0jrKAg",
    "job_id": "6QEywYsd0jrKAg",
    "response_code": 200,
    "delivered": True,
    "delivery_error": "",
}


def receive_one(sqs: Any, queue_url: str) -> dict[str, Any]:
    answer = sqs.receive_message(
        QueueUrl=queue_url, MessageAttributeNames=["All"], MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    messages = answer.get("Messages", [])
    assert len(messages) == 1, messages
    return dict(messages[0])


@pytest.mark.aws
def test_deliver_sends_the_exact_body_and_the_headers(moto: MotoServer, sqs: Any, queue_url: str) -> None:
    body = encode(PAYLOAD)
    backend = aws.SqsBackend(endpoint_url=moto.url)
    headers = {"X-Downloader-Signature": "sha256=abc", "X-Downloader-Job": "6QEywYsd0jrKAg", "Empty": ""}

    backend.deliver(Message(job_id="6QEywYsd0jrKAg", destination=queue_url, body=body, headers=headers))

    received = receive_one(sqs, queue_url)
    assert received["Body"].encode("utf-8") == body
    assert json.loads(received["Body"]) == PAYLOAD
    assert received["MessageAttributes"] == {
        "X-Downloader-Signature": {"DataType": "String", "StringValue": "sha256=abc"},
        "X-Downloader-Job": {"DataType": "String", "StringValue": "6QEywYsd0jrKAg"},
    }
    backend.close()


@pytest.mark.aws
def test_deliver_without_headers_sends_no_attributes(moto: MotoServer, sqs: Any, queue_url: str) -> None:
    backend = aws.SqsBackend.from_settings(Settings(sqs_endpoint_url=moto.url))
    backend.deliver(Message(job_id="j", destination=queue_url, body=b'{"a":1}'))

    received = receive_one(sqs, queue_url)
    assert received["Body"] == '{"a":1}'
    assert "MessageAttributes" not in received


@pytest.mark.aws
def test_a_missing_queue_is_an_unknown_destination(moto: MotoServer, queue_url: str) -> None:
    missing = queue_url.rsplit("/", 1)[0] + "/" + unique_name("missing")
    backend = aws.SqsBackend(endpoint_url=moto.url)
    with pytest.raises(UnknownDestination, match=rf"SendMessage to {missing}: .*NonExistentQueue"):
        backend.deliver(Message(job_id="j", destination=missing, body=b"{}"))


@pytest.mark.aws
def test_an_unreachable_endpoint_is_a_notification_error(queue_url: str) -> None:
    backend = aws.SqsBackend(endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(NotificationError, match=rf"SendMessage to {queue_url}: Could not connect") as caught:
        backend.deliver(Message(job_id="j", destination=queue_url, body=b"{}"))
    assert not isinstance(caught.value, UnknownDestination)


@pytest.mark.aws
def test_one_client_per_region_and_close_forgets_them(moto: MotoServer) -> None:
    backend = aws.SqsBackend(endpoint_url=moto.url)
    west = backend.client_for("eu-west-1")
    assert backend.client_for("eu-west-1") is west
    assert west.meta.region_name == "eu-west-1"
    assert backend.client_for("us-east-2") is not west

    backend.close()
    assert backend.client_for("eu-west-1") is not west


@pytest.mark.parametrize(
    ("queue_url", "region"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/callbacks", "eu-west-1"),
        ("https://sqs.us-gov-west-1.amazonaws.com/123456789012/q", "us-gov-west-1"),
        ("https://sqs-fips.us-east-2.amazonaws.com/123456789012/q", "us-east-2"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
        ("https://ap-southeast-2.queue.amazonaws.com/123456789012/q", "ap-southeast-2"),
        ("https://vpce-0abc-xyz.sqs.eu-central-1.vpce.amazonaws.com/123456789012/q", "eu-central-1"),
        ("https://SQS.EU-WEST-3.AMAZONAWS.COM/123456789012/q", "eu-west-3"),
        ("https://queue.amazonaws.com/123456789012/q", ""),
        ("http://127.0.0.1:4566/000000000000/q", ""),
        ("https://sqs.eu-west-1.amazonaws.com.evil.example/123/q", ""),
        ("callbacks", ""),
        ("", ""),
    ],
)
def test_queue_region_comes_from_the_url_host(queue_url: str, region: str) -> None:
    assert aws.queue_region(queue_url) == region


def test_the_configured_region_wins_then_the_urls_then_us_east_1() -> None:
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/q"
    assert aws.SqsBackend(region="ap-south-1").region_of(url) == "ap-south-1"
    assert aws.SqsBackend().region_of(url) == "eu-west-1"
    assert aws.SqsBackend().region_of("http://127.0.0.1:9/000000000000/q") == "us-east-1"


def test_message_attributes_keep_ten_valid_non_empty_headers() -> None:
    headers = {
        "": "no name",
        "Empty": "",
        "AWS.Reserved": "x",
        "amazon.reserved": "x",
        "bad name": "x",
        ".dot-first": "x",
        "two..dots": "x",
        **{f"H-{i}.v_{i}": str(i) for i in range(12)},
    }
    attributes = aws.message_attributes(headers)
    assert list(attributes) == [f"H-{i}.v_{i}" for i in range(10)]
    assert attributes["H-3.v_3"] == {"DataType": "String", "StringValue": "3"}
