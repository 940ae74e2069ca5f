"""Callback signatures: the header format, key rotation, replay window, tampering."""

from __future__ import annotations

import hashlib
import hmac

from downloader.delivery import signing

BODY = b'{"success":true,"job_id":"AbCdEfGhIjKlMn"}'
NOW = 1_800_000_000


def test_the_header_is_t_then_one_v1_per_key() -> None:
    header = signing.sign(BODY, ["old", "new"], NOW)
    t, first, second = header.split(",")
    assert t == f"t={NOW}"
    expected_old = hmac.new(b"old", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert first == f"v1={expected_old}"
    assert second == f"v1={signing.digest('new', NOW, BODY)}" and second != first


def test_a_receiver_with_any_one_active_key_verifies() -> None:
    header = signing.sign(BODY, ["old", "new"], NOW)
    assert signing.verify(header, BODY, ["new"], now=NOW + 1)
    assert signing.verify(header, BODY, ["old", "unrelated"], now=NOW + 1)
    assert not signing.verify(header, BODY, ["unrelated"], now=NOW + 1)


def test_tampered_bodies_and_timestamps_fail() -> None:
    header = signing.sign(BODY, ["k"], NOW)
    assert not signing.verify(header, BODY.replace(b"true", b"false"), ["k"], now=NOW)
    forged = header.replace(f"t={NOW}", f"t={NOW + 10}")
    assert not signing.verify(forged, BODY, ["k"], now=NOW + 10)


def test_old_signatures_are_replays() -> None:
    header = signing.sign(BODY, ["k"], NOW)
    assert signing.verify(header, BODY, ["k"], now=NOW + 299)
    assert not signing.verify(header, BODY, ["k"], now=NOW + 301)
    assert signing.verify(header, BODY, ["k"], now=NOW + 3000, tolerance=3600)


def test_malformed_headers_are_refused_not_raised() -> None:
    for header in ["", "v1=abc", "t=x,v1=abc", f"t={NOW}", f"t={NOW},t={NOW},v1=abc", "garbage"]:
        assert not signing.verify(header, BODY, ["k"], now=NOW)


def test_keys_come_from_a_comma_separated_setting() -> None:
    assert signing.parse_keys(" a , b,,") == ["a", "b"]
    assert signing.parse_keys("") == []


def test_every_callback_names_its_delivery_and_is_signed_only_with_keys() -> None:
    assert signing.headers(BODY, [], "Ab.1") == {"X-Downloader-Delivery": "Ab.1"}
    signed = signing.headers(BODY, ["k"], "Ab.1", NOW)
    assert signed["X-Downloader-Signature"] == signing.sign(BODY, ["k"], NOW)
    assert signing.delivery_id("AbCdEfGhIjKlMn", 2) == "AbCdEfGhIjKlMn.2"
