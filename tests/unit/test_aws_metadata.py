"""A job's `extra` as S3 user metadata: the original's rules for JSON objects (3.9), and what
S3 would refuse (header-unsafe keys, non-ASCII values, over 2 KB) adapted instead of failing."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from downloader.delivery.aws import METADATA_LIMIT_BYTES, s3_metadata


def metadata_size(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def test_no_extra_no_metadata() -> None:
    assert s3_metadata("") == {}
    assert s3_metadata("{}") == {}


def test_strings_as_they_are_numbers_truncated_other_types_dropped() -> None:
    extra = (
        '{"shop": "skroutz", "spaces": "a b  c", "int": 42, "neg": -7.9, "float": 12.99, "big": 1e20,'
        ' "true": true, "false": false, "null": null, "list": [1], "obj": {"a": "b"}}'
    )
    assert s3_metadata(extra) == {
        "shop": "skroutz",
        "spaces": "a b  c",
        "int": "42",
        "neg": "-7",
        "float": "12",
        "big": "100000000000000000000",
    }


def test_keys_are_lower_cased_and_the_first_of_a_case_clash_wins() -> None:
    assert s3_metadata('{"Shop-ID": "1", "shop-id": "2", "X_Y": "3"}') == {"shop-id": "1", "x_y": "3"}


@pytest.mark.parametrize("key", ["", "with space", "colon:", "slash/", "ünï", "new\nline", 'quote"', "a=b"])
def test_keys_that_are_not_header_names_are_dropped(key: str) -> None:
    assert s3_metadata(json.dumps({key: "v", "ok": "v"})) == {"ok": "v"}


def test_non_ascii_values_are_percent_encoded_and_decode_back() -> None:
    metadata = s3_metadata('{"name": "Καλημέρα 100%", "tab": "a\\tb", "plain": "100% ok"}')
    assert metadata["plain"] == "100% ok"  # printable ASCII: unchanged, even its %
    assert metadata["name"].isascii()
    assert urllib.parse.unquote(metadata["name"]) == "Καλημέρα 100%"
    assert metadata["tab"] == "a%09b"


def test_a_lone_surrogate_does_not_break_the_encoding() -> None:
    assert s3_metadata('{"a": "x\\ud800y"}') == {"a": "x?y"}  # "?" is printable ASCII: left as it is


@pytest.mark.parametrize(
    "extra", ["foobar", "[1, 2]", '"a json string"', "42", "null", "{not json", '{"a": NaN}', "Καλημέρα"]
)
def test_an_extra_that_is_not_an_object_is_kept_under_one_key(extra: str) -> None:
    metadata = s3_metadata(extra)
    assert list(metadata) == ["extra"]
    assert urllib.parse.unquote(metadata["extra"]) == extra


def test_a_long_plain_extra_is_truncated_to_the_limit() -> None:
    metadata = s3_metadata("x" * 5000)
    assert metadata == {"extra": "x" * (METADATA_LIMIT_BYTES - len("extra"))}
    assert metadata_size(metadata) == METADATA_LIMIT_BYTES


def test_a_long_non_ascii_extra_is_cut_between_characters() -> None:
    text = "é" * 1000  # 6 encoded characters each
    metadata = s3_metadata(text)
    assert metadata_size(metadata) <= METADATA_LIMIT_BYTES
    value = metadata["extra"]
    assert len(value) == (METADATA_LIMIT_BYTES - len("extra")) // 6 * 6
    assert text.startswith(urllib.parse.unquote(value, errors="strict"))


def test_object_entries_beyond_the_limit_are_dropped_in_order() -> None:
    big = "v" * 900
    metadata = s3_metadata(f'{{"a": "{big}", "b": "{big}", "c": "{big}", "d": "small"}}')
    assert metadata == {"a": big, "b": big, "d": "small"}
    assert metadata_size(metadata) <= METADATA_LIMIT_BYTES
