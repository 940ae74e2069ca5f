"""The outbound policy as pure functions: which addresses are public, the allowed-network
exceptions, the settings it is built from, and which URLs can be requested at all."""

from __future__ import annotations

import ipaddress

import pytest

from downloader import settings as settings_module
from downloader.errors import ConfigurationError
from downloader.outbound import PERMISSIVE, Policy, check_address, check_url

STRICT = Policy()

# (address, the reason's expected start; None = public, allowed)
ADDRESSES: list[tuple[str, str | None]] = [
    # public
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("93.184.215.14", None),
    ("100.63.255.255", None),  # just below CGNAT
    ("100.128.0.0", None),  # just above CGNAT
    ("172.15.255.255", None),  # just below 172.16/12
    ("172.32.0.0", None),  # just above it
    ("198.17.255.255", None),  # just below the benchmarking block
    ("198.20.0.0", None),  # just above it
    ("223.255.255.255", None),  # last unicast before multicast
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("::ffff:8.8.8.8", None),  # IPv4-mapped public
    ("64:ff9b::8.8.8.8", None),  # NAT64 of a public address: how IPv6-only clusters get out
    # IPv4 special purpose
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.0", "shared address space, CGNAT"),
    ("100.127.255.255", "shared address space, CGNAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("192.0.0.170", "IETF protocol assignments"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("198.18.0.0", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6 special purpose
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),  # with a zone, as getaddrinfo may answer
    ("febf:ffff::1", "link-local"),
    ("fd00:ec2::254", "link-local, cloud metadata"),  # AWS's IPv6 metadata endpoint
    ("fc00::1", "private, unique local"),
    ("fdff:ffff::1", "private, unique local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:2::1", "benchmarking"),
    ("2001::1", "Teredo tunnel"),
    ("100::1", "discard-only"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("5f00::1", "SRv6"),
    ("4000::1", "reserved"),  # outside global unicast 2000::/3
    # IPv4 addresses hidden in IPv6 ones
    ("::ffff:127.0.0.1", "loopback, IPv4-mapped 127.0.0.1"),
    ("::ffff:169.254.169.254", "link-local, IPv4-mapped 169.254.169.254"),
    ("::ffff:10.1.2.3", "private, IPv4-mapped 10.1.2.3"),
    ("::ffff:0.0.0.0", "unspecified, IPv4-mapped 0.0.0.0"),
    ("64:ff9b::127.0.0.1", "loopback, NAT64 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "link-local, NAT64 169.254.169.254"),
    ("64:ff9b::100.64.0.1", "shared address space, CGNAT, NAT64 100.64.0.1"),
    ("::127.0.0.1", "loopback, IPv4-compatible 127.0.0.1"),
    ("::8.8.8.8", "IPv4-compatible address, deprecated"),
    ("2002:7f00:1::1", "loopback, 6to4 127.0.0.1"),
    ("2002:a9fe:a9fe::1", "link-local, 6to4 169.254.169.254"),
    ("2002:c0a8:101::", "private, 6to4 192.168.1.1"),
    ("2002:808:808::1", "6to4 address, deprecated"),
]


@pytest.mark.parametrize("address,reason", ADDRESSES)
def test_address_classification(address: str, reason: str | None) -> None:
    got = check_address(address, STRICT)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


def test_the_table_is_large_and_covers_both_families() -> None:
    v4 = [a for a, _ in ADDRESSES if ipaddress.ip_address(a.split("%")[0]).version == 4]
    assert len(ADDRESSES) >= 40 and len(v4) >= 20 and len(ADDRESSES) - len(v4) >= 20


def test_address_objects_are_accepted_too() -> None:
    assert check_address(ipaddress.ip_address("10.0.0.1"), STRICT) == "private"
    assert check_address(ipaddress.ip_address("8.8.8.8"), STRICT) is None


def test_something_that_is_not_an_address_is_refused() -> None:
    assert check_address("metadata.internal", STRICT) == "not an IP address"


def test_allow_private_networks_skips_the_check() -> None:
    for address, _ in ADDRESSES:
        assert check_address(address, PERMISSIVE) is None


def test_allowed_networks_open_exactly_their_ranges() -> None:
    policy = Policy.parse(False, " 10.2.0.0/16, 127.0.0.1 ,fd12:3456::/32")
    assert check_address("10.2.255.255", policy) is None
    assert check_address("10.3.0.0", policy) == "private"
    assert check_address("127.0.0.1", policy) is None
    assert check_address("127.0.0.2", policy) == "loopback"
    assert check_address("fd12:3456::9", policy) is None
    assert check_address("fd12:3457::9", policy) == "private, unique local"
    # The same IPv4 address written as IPv6 is the same destination.
    assert check_address("::ffff:10.2.0.1", policy) is None
    assert check_address("::ffff:10.3.0.1", policy) == "private, IPv4-mapped 10.3.0.1"
    # Exceptions never close public addresses, nor open other non-public ones.
    assert check_address("8.8.8.8", policy) is None
    assert check_address("169.254.169.254", policy) == "link-local"


def test_an_allowed_network_can_open_the_metadata_endpoint_only_explicitly() -> None:
    policy = Policy.parse(False, "169.254.169.254/32")
    assert check_address("169.254.169.254", policy) is None
    assert check_address("169.254.169.253", policy) == "link-local"


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.2.0.1/16", "not-a-network", "10.0.0.0/8;"])
def test_an_invalid_cidr_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Policy.parse(False, f"10.1.0.0/16,{text}")
    assert "DOWNLOADER_ALLOWED_NETWORKS" in str(info.value)


def test_the_policy_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOWNLOADER_ALLOW_PRIVATE_NETWORKS", raising=False)
    monkeypatch.setenv("DOWNLOADER_ALLOWED_NETWORKS", "10.2.0.0/16")
    policy = Policy.from_settings(settings_module.load())
    assert policy == Policy(False, (ipaddress.ip_network("10.2.0.0/16"),))
    monkeypatch.setenv("DOWNLOADER_ALLOW_PRIVATE_NETWORKS", "true")
    assert Policy.from_settings(settings_module.load()).allow_private_networks
    monkeypatch.setenv("DOWNLOADER_ALLOWED_NETWORKS", "10.2.0.0/99")
    with pytest.raises(ConfigurationError):
        Policy.from_settings(settings_module.load())


def test_the_default_policy_is_strict() -> None:
    assert Policy() == Policy(allow_private_networks=False, allowed_networks=())
    assert check_address("127.0.0.1", Policy()) == "loopback"


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a.png", "https://example.com", "HTTPS://Example.COM:8443/x?y#z", "http://[::1]:80/"],
)
def test_http_and_https_urls_can_be_requested(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://example.com/a", 'unsupported protocol scheme "ftp"'),
        ("file:///etc/passwd", 'unsupported protocol scheme "file"'),
        ("gopher://127.0.0.1:6379/_INFO", 'unsupported protocol scheme "gopher"'),
        ("dict://127.0.0.1:11211/stats", 'unsupported protocol scheme "dict"'),
        ("javascript:alert(1)", 'unsupported protocol scheme "javascript"'),
        ("/just/a/path", "no scheme"),
        ("//example.com/a", "no scheme"),
        ("http:///a", "no host"),
        ("http://[::1/", "invalid URL"),
    ],
)
def test_other_urls_are_refused(url: str, reason: str) -> None:
    got = check_url(url)
    assert got is not None and got.startswith(reason), got
