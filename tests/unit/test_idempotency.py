"""Idempotency keys without Redis: which keys are accepted, what a request's fingerprint
covers, whose scope a key lives in, and the keys `downloader enqueue` derives per line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from downloader.cli.tools import line_keys
from downloader.config.apikeys import ALL, Grant
from downloader.errors import ConfigurationError
from downloader.jobs import validation
from downloader.store import idempotency, keys

BODY = {
    "url": "http://127.0.0.1:9/a.png",
    "aggr_id": "shop",
    "aggr_limit": 3,
    "callback_url": "http://127.0.0.1:9/cb",
    "extra": "order-1",
}


def fingerprint_of(body: dict[str, object] | bytes) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return idempotency.fingerprint(*validation.parse_download_request(raw, max_size_cap=None))


@pytest.mark.parametrize(
    "key", ["a", "order-42", "k" * 255, "550e8400-e29b-41d4-a716-446655440000", "!~:/=+"]
)
def test_keys_of_visible_ascii_up_to_255_characters_are_accepted(key: str) -> None:
    assert idempotency.key_problem(key) == ""


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "Idempotency-Key is empty"),
        ("k" * 256, "Idempotency-Key is longer than 255 characters"),
        ("a b", "Idempotency-Key may contain only visible ASCII characters (no spaces or controls)"),
        ("a\tb", "Idempotency-Key may contain only visible ASCII characters (no spaces or controls)"),
        ("caf\u00e9", "Idempotency-Key may contain only visible ASCII characters (no spaces or controls)"),
    ],
)
def test_other_keys_are_refused_with_a_reason(key: str, problem: str) -> None:
    assert idempotency.key_problem(key) == problem


def test_the_fingerprint_is_of_the_request_as_validated_not_of_its_bytes() -> None:
    first = fingerprint_of(BODY)
    assert len(first) == 64
    assert fingerprint_of(json.dumps(dict(reversed(BODY.items())), indent=4).encode()) == first
    assert fingerprint_of({**BODY, "unknown_field": 1}) == first  # ignored by validation as by the original


@pytest.mark.parametrize(
    "change",
    [
        {"url": "http://127.0.0.1:9/b.png"},
        {"aggr_limit": 4},
        {"extra": "order-2"},
        {"aggr_id": "shop2"},
        {"max_retries": 2},
        {"mime_type": "image/*"},
    ],
)
def test_any_field_a_client_sets_changes_the_fingerprint(change: dict[str, object]) -> None:
    assert fingerprint_of({**BODY, **change}) != fingerprint_of(BODY)


def test_scopes_follow_what_a_key_may_reach() -> None:
    assert idempotency.scope_of(ALL) == idempotency.ALL_SCOPE
    a, b = idempotency.scope_of(Grant(("shop-a",))), idempotency.scope_of(Grant(("shop-b",)))
    assert a != b and idempotency.ALL_SCOPE not in (a, b)
    assert idempotency.scope_of(Grant(("x", "y"))) == idempotency.scope_of(Grant(("y", "x")))
    assert ":" not in a
    assert keys.idempotency(a, "k:1") == f"idempotency:{a}:k:1"


OPTIONS: dict[str, object] = {"aggr_id": "shop", "aggr_limit": 4, "callback_url": "http://cb/"}


def test_enqueue_keys_are_stable_per_file_line_text_and_options(tmp_path: Path) -> None:
    path = str(tmp_path / "urls.txt")
    urls = [(1, "http://a/1"), (3, "http://a/2")]
    first = line_keys(path, urls, "enqueue-", OPTIONS)
    assert first == line_keys(path, urls, "enqueue-", dict(reversed(OPTIONS.items()))), "a re-run: same keys"
    assert line_keys(path, [*urls, (4, "http://a/3")], "enqueue-", OPTIONS).items() >= first.items()
    assert len(set(first.values())) == 2 and all(k.startswith("enqueue-") for k in first.values())
    assert all(idempotency.key_problem(k) == "" for k in first.values())
    assert line_keys(path, [(1, "http://a/other")], "enqueue-", OPTIONS)[1] != first[1]  # an edited line
    assert line_keys(str(tmp_path / "b.txt"), urls, "enqueue-", OPTIONS)[1] != first[1]  # another file
    assert line_keys(path, urls, "enqueue-", {**OPTIONS, "aggr_id": "shop2"})[1] != first[1]  # other jobs
    assert line_keys("-", urls, "p-", OPTIONS)[1].startswith("p-")


def test_an_enqueue_prefix_that_makes_bad_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--idempotency-prefix: Idempotency-Key may contain only"):
        line_keys(str(tmp_path / "u.txt"), [(1, "http://a/1")], "my prefix ", OPTIONS)
