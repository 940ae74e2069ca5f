"""The dashboard's end-to-end latency: p50/p95 read from per-minute histogram buckets (the
bound of the bucket each falls in), summed per aggregation; and the callbacks' destinations
grouped by host. Pure functions, no Redis."""

from __future__ import annotations

import pytest

from downloader.api.routes.ui import _histograms, _percentiles, _remembered_limits
from downloader.delivery.notifying import destination_host
from downloader.store import keys


def test_percentiles_are_the_bounds_of_the_buckets_they_fall_in() -> None:
    assert _percentiles({}) == (None, None)
    assert _percentiles({"1": 1}) == (1.0, 1.0)
    # 90 jobs within 2 s, 10 within 60 s: the median is fast, the 95th slow
    assert _percentiles({"60": 10, "2": 90}) == (2.0, 60.0)
    assert _percentiles({"0.25": 50, "0.5": 45, "5": 5}) == (0.25, 0.5)
    # above the last bound: "at least" the last bound; unknown bounds are ignored
    assert _percentiles({"inf": 3, "bogus": 100}) == (float(keys.LATENCY_BOUNDS[-1]),) * 2


def test_histograms_sum_each_aggregations_buckets_over_minutes() -> None:
    minutes = [{"shop:2": 3, "shop:5": 1, "shop.example:2": 7}, {"shop:2": 2, "blog:1": 4}]
    assert _histograms(minutes) == {"shop": {"2": 5, "5": 1}, "shop.example": {"2": 7}, "blog": {"1": 4}}
    # an aggregation id with a colon in it: the bound is what follows the last one
    assert _histograms([{"a:b:3": 1, "a:3": 2}]) == {"a:b": {"3": 1}, "a": {"3": 2}}


def test_remembered_limits_take_the_latest_minute() -> None:
    minutes = [{"cdn:limit": 8, "cdn:ok": 3}, {"cdn:limit": 16, "shop:failed": 1}, {"bad:limit": 0}]
    assert _remembered_limits(minutes) == {"cdn": 16}


@pytest.mark.parametrize(
    ("backend", "where", "host"),
    [
        ("http", "http://hooks.example.com:8080/cb?x=1", "hooks.example.com"),
        ("http", "not a url", "(unparsable)"),
        ("kafka", "downloads-topic", "kafka:downloads-topic"),
        ("sqs", "https://sqs.eu-west-1.amazonaws.com/1/q", "sqs:sqs.eu-west-1.amazonaws.com"),
    ],
)
def test_callbacks_are_grouped_by_destination_host(backend: str, where: str, host: str) -> None:
    assert destination_host(backend, where) == host
