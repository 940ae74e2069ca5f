"""The outbound policy as pure functions: which addresses are public, the allowed-network
exceptions, the settings it is built from, and which URLs can be requested at all. And what
requests did to a request (URL preparation, header checks, Basic auth from the URL, credentials
on redirects, proxy selection and NO_PROXY), which the layer keeps without requests: requests
is the oracle of those tests."""

from __future__ import annotations

import ipaddress
import random
import string
from typing import Any

import pytest
import requests
import requests.auth
import requests.utils

from downloader.config import settings as settings_module
from downloader.errors import ConfigurationError
from downloader.fetching import outbound
from downloader.fetching.outbound import PERMISSIVE, Policy, check_address, check_url

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


# --- what requests did to a request, kept without requests (requests is the oracle here) ---------


def requests_prepare(url: str) -> tuple[str, str]:
    """("ok", url) or (error class, text) as requests prepared `url`, mapped to our classes."""
    try:
        prepared = requests.models.PreparedRequest()
        prepared.prepare_url(url, None)
        return "ok", str(prepared.url)
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
        return "InvalidRequest", str(exc)


def ours_prepare(url: str) -> tuple[str, str]:
    try:
        return "ok", outbound.prepare_url(url)
    except outbound.InvalidRequest as exc:
        return "InvalidRequest", str(exc)


def random_url(rng: random.Random) -> str:
    schemes = ["http", "https", "HTTP", "hTtPs", "ftp", "", "http:", "https:/"]
    hosts = ["example.com", "EXAMPLE.com", "cdn.example.co.uk", "127.0.0.1", "10.0.0.01", "[::1]", "[fe80::1%25eth0]",
             "bücher.de", "xn--bcher-kva.de", "a_b.example", "-x.com", "*.x.com", ".x.com", "a..b", "", "h",
             "ex ample.com", "e%41.com", "日本.jp", "x.com.", "UPPER.Example.COM"]  # fmt: skip
    users = ["", "", "", "u:p@", "user@", ":p@", "u%40x:p%3A@", "ü:ö@", "a:b:c@"]
    ports = ["", "", "", ":80", ":8080", ":080", ":0", ":65535", ":65536", ":", ":x", ":443"]
    alphabet = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%#[] \"<>\\^`{|}é日\x00\t"

    def part(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))

    path = rng.choice(
        ["", "/", "/a.png", "/a/./b", "/a/../b", "/x/.", "//x", "/%7e/%2f/%zz/%41%42", "/" + part(12)]
    )
    query = rng.choice(["", "", "?", "?a=1&b=2", "?" + part(10), "?q=%E2%82%AC"])
    fragment = rng.choice(["", "", "#", "#frag", "#" + part(5)])
    return (f"{rng.choice([' ', '', '', ''])}{rng.choice(schemes)}://{rng.choice(users)}{rng.choice(hosts)}"
            f"{rng.choice(ports)}{path}{query}{fragment}")  # fmt: skip


HAND_PICKED_URLS = [
    "http://example.com",
    "http://example.com/a.png",
    "HTTP://Example.COM/A.png?x=1#f",
    "https://user:pa%20ss@example.com:8443/a b/c?q=a b",
    "http://example.com/%7Euser/%2fx/%zz",
    "http://example.com/a/./b/../c",
    "http://example.com:65536/x",
    "http://example.com:/x",
    "http://bücher.de/ü?ü=ü",
    "http://*.example.com/",
    "http:///x",
    "/just/a/path",
    "example.com/x",
    "  http://example.com/x",
    "http://[::1]:8080/x",
    "http://[::1/x",
    "http://127.0.0.1:41234/f/1234.png",
    "http://h/x?",
    "http://h/x?a?b",
    "http://h/x/.hidden",
    "ftp://h/x",
    "mailto:someone@example.com",
]


@pytest.mark.parametrize("url", HAND_PICKED_URLS)
def test_urls_are_prepared_as_requests_prepared_them(url: str) -> None:
    assert ours_prepare(url) == requests_prepare(url)


def near_simple_url(rng: random.Random) -> str:
    """URLs like those the fast path takes, and ones a character away from them."""
    alphabet = string.ascii_letters + string.digits + "._~!$&'()*+,;=:@/-" * 3 + "%?#. AZé"
    host = rng.choice(["h.test", "127.0.0.1", "a-b.c_d.test", "H.test", "0x7f.1", "1.2.3.4.5", "a..b", "_x"])
    port = rng.choice(["", "", ":1", ":8080", ":65535", ":65536", ":99999", ":080", ":0"])
    path = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
    query = rng.choice(["", "", "?", "?" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))])
    return f"{rng.choice(['http', 'https', 'Http'])}://{host}{port}{path}{query}"


def test_urls_are_prepared_as_requests_prepared_them_at_random() -> None:
    rng = random.Random(20261130)
    fast = 0
    for _ in range(20_000):
        for url in (random_url(rng), near_simple_url(rng)):
            assert ours_prepare(url) == requests_prepare(url), url
            fast += bool(outbound._SIMPLE_URL.match(url))
    assert fast > 2_000  # the fast path was exercised too


def test_the_fast_path_takes_the_common_urls() -> None:
    for url in ["http://127.0.0.1:8080/f/1.png", "https://cdn.example.com/a/b_c-d.jpg?w=100&h=50",
                "https://img.example.com/p/@2x/a,b;c=d.png"]:  # fmt: skip
        assert (
            outbound._SIMPLE_URL.match(url) and outbound.prepare_url(url) == url == requests_prepare(url)[1]
        )


def test_requoting_is_requests() -> None:
    rng = random.Random(7)
    alphabet = string.printable + "%%%%é日"
    for _ in range(5_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert outbound.requote_uri(text) == requests.utils.requote_uri(text), text


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": "x", "Accept": "*/*"},
        {"X-A": " leading space"},
        {"X-A": "new\r\nline"},
        {"X-A": "trailing space "},
        {" X-A": "v"},
        {"X:A": "v"},
        {"X-A": ""},
        {"X-A": 1},
        {"X-A": b"bytes"},
        {"X-A": b" bytes"},
        {"X-A": "tab\tinside"},
    ],
)
def test_headers_are_validated_as_requests_did(headers: dict[str, Any]) -> None:
    try:
        for header in headers.items():
            requests.utils.check_header_validity(header)
        expected = ""
    except requests.exceptions.InvalidHeader as exc:
        expected = str(exc)
    try:
        outbound._prepare_headers(headers, "GET", None, "http://h/")
        got = ""
    except outbound.InvalidRequest as exc:
        got = str(exc)
    assert got == expected


@pytest.mark.parametrize(
    "method,url,headers,body",
    [
        ("GET", "http://h/x", {"User-Agent": "a", "Accept-Encoding": "gzip, deflate"}, None),
        ("GET", "http://u:p@h/x", {"Authorization": "Bearer t", "X": "1"}, None),
        ("GET", "http://u:@h/x", {}, None),
        ("GET", "http://u@h/x", {}, None),
        ("GET", "http://%C3%BC:%C3%B6@h/x", {}, None),
        ("POST", "http://h/cb", {"X-Sig": "s", "Content-Type": "application/json", "User-Agent": "u"}, b"{}"),
        ("POST", "http://h/cb", {"content-type": "text/plain", "Content-Type": "application/json"}, b"{}"),
        ("POST", "http://h/cb", {"Content-Type": "application/json"}, b""),
        ("POST", "http://h/cb", {"content-length": "7"}, b"abc"),
    ],
)
def test_request_headers_are_requests(
    method: str, url: str, headers: dict[str, str], body: bytes | None
) -> None:
    session = requests.Session()
    session.headers.clear()  # as the session of the fetcher and of the callbacks had them
    prepared = session.prepare_request(requests.Request(method, url, headers=headers, data=body or {}))
    ours = outbound._prepare_headers(headers, method, body or None, outbound.prepare_url(url))
    assert list(ours.items()) == list(prepared.headers.items())


def test_credentials_are_stripped_on_redirect_as_requests_did() -> None:
    urls = ["http://a.test/x", "https://a.test/x", "http://a.test:80/x", "https://a.test:443/y", "http://a.test:8080/",
            "https://a.test:8443/", "http://b.test/x", "http://A.test/x", "https://b.test:443/"]  # fmt: skip
    session = requests.Session()
    for old in urls:
        for new in urls:
            assert outbound.should_strip_auth(old, new) == session.should_strip_auth(old, new), (old, new)


def test_userinfo_and_basic_auth_are_requests() -> None:
    for url in ["http://u:p@h/", "http://u@h/", "http://:p@h/", "http://u:@h/", "http://h/", "http://%41:%42@h/",
                "http://ü:ö@h/"]:  # fmt: skip
        assert outbound.get_auth_from_url(url) == requests.utils.get_auth_from_url(url)
        user, password = outbound.get_auth_from_url(url)
        if user or password:
            assert outbound.basic_auth(user, password) == requests.auth._basic_auth_str(user, password)


def test_proxies_are_selected_as_requests_did() -> None:
    proxies = [{}, {"http": "p1", "https": "p2"}, {"all": "pa"}, {"http://h.test": "ph", "all": "pa"},
               {"all://h.test": "pah", "https": "ps"}]  # fmt: skip
    for table in proxies:
        for url in ["http://h.test/x", "https://h.test/x", "http://other.test/", "https://other.test:8443/"]:
            assert outbound.select_proxy(url, table) == requests.utils.select_proxy(url, table)


@pytest.mark.parametrize(
    "no_proxy",
    [None, "", "h.test", ".test", "other.test", "10.0.0.0/8", "10.1.2.3", "h.test:8080", "*", "localhost,127.0.0.1",
     "10.0.0.0/33", " h.test , x"],
)  # fmt: skip
def test_no_proxy_is_read_as_requests_read_it(monkeypatch: pytest.MonkeyPatch, no_proxy: str | None) -> None:
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    if no_proxy is not None:
        monkeypatch.setenv("NO_PROXY", no_proxy)
    environ = outbound._proxy_environment()
    assert environ.get("http") == "http://proxy.test:3128"
    for url in ["http://h.test/x", "http://h.test:8080/x", "http://sub.h.test/", "http://10.1.2.3/",
                "http://11.1.2.3/", "http://localhost/", "http://127.0.0.1:80/"]:  # fmt: skip
        expected = requests.utils.should_bypass_proxies(url, None)
        assert outbound._bypass_proxies(url, environ, no_proxy or None) == expected, url


def test_no_proxy_alone_reads_as_no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert outbound._proxy_environment() == {}  # so no per-request NO_PROXY matching at all
