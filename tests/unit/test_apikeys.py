"""DOWNLOADER_API_KEYS parsing, token lookup and aggregation grants."""

from __future__ import annotations

import pytest

from downloader.config.apikeys import ALL, Grant, InvalidApiKeys, parse_api_keys


def test_an_empty_setting_leaves_the_api_open() -> None:
    for raw in ("", " ", ",", " , ,"):
        assert not parse_api_keys(raw).enabled


def test_a_plain_token_covers_every_aggregation() -> None:
    ring = parse_api_keys("s3cret")
    assert ring.enabled
    assert ring.find("s3cret") == ALL
    assert ALL.covers("anything") and ALL.covers("")


def test_unknown_tokens_and_near_misses_are_not_found() -> None:
    ring = parse_api_keys("s3cret,other")
    for presented in ("", "s3cre", "s3crett", "S3CRET", " s3cret", "s3cret,other", "other=x"):
        assert ring.find(presented) is None, presented


def test_prefixes_restrict_a_token_to_matching_aggregation_ids() -> None:
    ring = parse_api_keys(" shop = shop-| partner-a ,admin")
    grant = ring.find("shop")
    assert grant == Grant(("shop-", "partner-a"))
    assert grant.covers("shop-images") and grant.covers("partner-a1")
    assert not grant.covers("shop") and not grant.covers("other") and not grant.covers("")
    assert ring.find("admin") == ALL


def test_blank_prefixes_are_dropped() -> None:
    assert parse_api_keys("t=a||b|").find("t") == Grant(("a", "b"))


def test_non_ascii_tokens_work() -> None:
    assert parse_api_keys("κλειδί").find("κλειδί") == ALL
    assert parse_api_keys("κλειδί").find("κλειδι") is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("good,=prefix", "entry 2: the token is empty"),
        ("bad token", "entry 1: the token is empty or contains white space"),
        ("YmFzZTY0=", "entry 1: '=' without aggregation prefixes"),
        ("ok,t=|", "entry 2: '=' without aggregation prefixes"),
    ],
)
def test_unreadable_entries_are_refused_without_showing_the_token(raw: str, reason: str) -> None:
    with pytest.raises(InvalidApiKeys) as info:
        parse_api_keys(raw)
    assert reason in str(info.value)
    for secret in ("YmFzZTY0", "bad token", "good"):
        assert secret not in str(info.value)


def test_tokens_are_kept_out_of_reprs() -> None:
    ring = parse_api_keys("topsecret=aggr-")
    assert "topsecret" not in repr(ring)
    assert "aggr-" in repr(ring)


def test_the_first_of_duplicate_tokens_wins() -> None:
    assert parse_api_keys("t=a,t=b").find("t") == Grant(("a",))
