"""The one outbound HTTP layer of downloads and HTTP callbacks: no request reaches a non-public address.

Strangers choose the URLs we fetch and clients the URLs we POST to, while we run next to cloud
metadata endpoints and internal services (server-side request forgery). So:

* Every new connection resolves its host ONCE (`getaddrinfo`, all addresses; the resolver is
  injectable), refuses the whole destination if ANY address is not public (`check_address`),
  and connects to those checked addresses themselves. Nothing resolves the name a second time,
  so a DNS answer that changes between check and connect (DNS rebinding) cannot slip through.
* How: a `Client` drives urllib3 directly (no requests on these hot paths: its per-request
  machinery cost several times urllib3's own). Its pool manager builds pools whose connection
  classes replace `_new_conn` (the one place urllib3 turns host:port into a socket) by
  resolve-check-connect. The connection's `host` stays the URL's hostname, so the Host
  header, TLS SNI and certificate verification all still use the name, not the address.
  Keep-alive connections are reused only for the same scheme/host/port, i.e. an already
  checked address. A refusal is raised before any socket exists: the target sees nothing.
* Redirects are followed by hand (`Client.request`): each hop is a new request through the same
  pools (so re-resolved and re-checked), only http/https at every hop, at most
  `max_redirects` hops; credentials are dropped when the host changes. Callbacks
  (`Client.exchange`) never follow redirects.
* What requests did to a request is kept, so jobs and callbacks see the same URLs, headers and
  error texts as before: URL preparation (`prepare_url`: IDNA, requoting, the same error
  texts), header validation, Basic auth from `user:password@` in the URL, Content-Length of a
  body, and errors that carry urllib3's texts unchanged (`RequestError` and its subclasses,
  classified as requests' exception classes were). No cookies are kept: the session's jar
  refused every cookie, so none was ever sent back.
* Proxies (an aggregation's proxy, or HTTP(S)_PROXY/ALL_PROXY from the environment, which wins
  per scheme unless NO_PROXY matches, as requests chose): the proxy resolves the target, so its
  address cannot be pinned. The proxy itself is the operator's choice and is not checked.
  Before a request goes through a proxy we check the target as WE resolve it: an IP-literal
  target is checked exactly; a hostname is best effort (the proxy may resolve it
  differently, and a name we cannot resolve is left to the proxy). The environment is read
  once, when a `Client` is made.
* TLS: one SSLContext (CA bundle loaded once) is shared by all pools of an `Outbound`, and
  verifies HTTPS proxies as well; loading the bundle per connection costs ~60 ms of CPU
  (DESIGN.md). It trusts `ca_file`, else REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.util
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import quote, unquote, urljoin, urlparse, urlsplit, urlunparse

import certifi
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util.connection
import urllib3.util.ssl_
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    DecodeError,
    LocationParseError,
    LocationValueError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.url import parse_url

from downloader.config import parsing
from downloader.errors import DestinationNotAllowed, DownloaderError

if TYPE_CHECKING:
    from downloader.config.settings import Settings

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007 (a runtime alias)
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007
#: `socket.getaddrinfo`'s answer: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[Any, Any, int, str, Any]
#: Called as `resolver(host, port, family, socket.SOCK_STREAM)`, like `socket.getaddrinfo`.
Resolver = Callable[..., Sequence[AddrInfo]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
NOT_ALLOWED = "destination address not allowed"
#: Ends every refusal: what would allow it (the text before it is the original's contract).
HOW_TO_ALLOW = "; allow it with DOWNLOADER_ALLOWED_NETWORKS or DOWNLOADER_ALLOW_PRIVATE_NETWORKS=true"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Dropped from a redirect to another host (requests' and Go's rule).
CREDENTIAL_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")


# --- the address policy ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which non-public addresses may be reached: all of them, or the listed networks only."""

    allow_private_networks: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow_private_networks: bool, allowed_networks: str) -> Policy:
        return cls(allow_private_networks, parsing.networks(allowed_networks))

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls.parse(settings.allow_private_networks, settings.allowed_networks)


#: Everything allowed (local use, tests): the address check is skipped.
PERMISSIVE = Policy(allow_private_networks=True)


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in pairs)


# First match wins, so exact addresses come before the blocks holding them (IANA special-purpose
# registries). Anything else that Python does not call global is refused as well.
_IPV4_BLOCKED = _nets(
    ("255.255.255.255/32", "broadcast"),
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this network, reserved"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space, CGNAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments, reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast, reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
_IPV6_BLOCKED = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64, private"),
    ("100::/64", "discard-only, reserved"),
    ("2001::/32", "Teredo tunnel"),
    ("2001:2::/48", "benchmarking"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments, reserved"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6 segment identifiers, reserved"),
    ("fd00:ec2::254/128", "link-local, cloud metadata"),
    ("fc00::/7", "private, unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local, deprecated"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def check_address(ip: str | IPAddress, policy: Policy) -> str | None:
    """Why `ip` may not be reached under `policy`, or None when it may."""
    if policy.allow_private_networks:
        return None
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return "not an IP address"
    if _listed(ip, policy.allowed_networks):
        return None
    return classify(ip)


def classify(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address, or None when it is."""
    if isinstance(ip, ipaddress.IPv4Address):
        reason = _first_match(ip, _IPV4_BLOCKED)
        return reason or (None if ip.is_global else "not globally routable")
    return _classify_v6(ip)


def _classify_v6(ip: ipaddress.IPv6Address) -> str | None:
    if ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    embedded = _embedded_v4(ip)
    if embedded is not None:
        kind, v4 = embedded
        inner = classify(v4)
        if inner is not None:
            return f"{inner}, {kind} {v4}"
        if kind in ("IPv4-mapped", "NAT64"):
            return None  # reaches the public IPv4 address (NAT64: how IPv6-only clusters get out)
        return f"{kind} address, deprecated"
    reason = _first_match(ip, _IPV6_BLOCKED)
    if reason is not None:
        return reason
    if ip not in _GLOBAL_UNICAST:
        return "reserved"
    return None if ip.is_global else "not globally routable"


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 one stands for: mapped, NAT64, IPv4-compatible, 6to4."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    return None


def _first_match(ip: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    for network, reason in table:
        if ip in network:
            return reason
    return None


def _listed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            candidates.append(embedded[1])  # allowing 10.2.0.0/16 allows ::ffff:10.2.0.1 too
    return any(c in net for c in candidates for net in networks)


def check_url(url: str) -> str | None:
    """Why `url` cannot be requested at all (scheme, host), or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"invalid URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        return f'unsupported protocol scheme "{scheme}"' if scheme else "no scheme (only http and https)"
    if not parts.hostname:
        return "no host"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# --- errors ----------------------------------------------------------------------------------


class RequestError(DownloaderError, OSError):
    """A request that failed, carrying urllib3's error (its text unchanged: requests wrapped
    urllib3's errors the same way, and these texts reach job errors and callback texts).
    The subclasses are the classes of requests that the callers told apart. An OSError as
    requests' errors were, and in the service's tree (errors.py draws it)."""

    def __init__(self, error: object) -> None:
        super().__init__(error)


class ConnectionFailed(RequestError):
    """Connecting, sending or receiving the response head failed (requests' ConnectionError)."""


class TLSError(ConnectionFailed):
    """A TLS handshake or certificate failure (requests' SSLError)."""


class ProxyFailed(ConnectionFailed):
    """The proxy could not be reached or refused the tunnel (requests' ProxyError)."""


class RequestTimeout(RequestError):
    """A connect or read timeout (requests' Timeout)."""


class ConnectTimeout(ConnectionFailed, RequestTimeout):
    """Connecting timed out."""


class ReadTimeout(RequestTimeout):
    """The response head did not arrive in time."""


class BodyError(RequestError):
    """The body of a response read in full (a callback's) was cut or undecodable."""


class TooManyRedirects(RequestError):
    """More redirects than allowed."""


class InvalidRequest(RequestError, ValueError):
    """The request cannot be made as given: URL, scheme, header or proxy URL (requests'
    InvalidURL, MissingSchema, InvalidSchema, InvalidHeader, InvalidProxyURL)."""


# --- the layer -----------------------------------------------------------------------------


class Outbound:
    """Resolution, checks, pinned connections and the TLS context for one process."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        resolver: Resolver = socket.getaddrinfo,
        ca_file: str | None = None,
    ) -> None:
        self.policy = policy if policy is not None else Policy()
        self.resolver = resolver
        self.ssl_context = _shared_context(ca_file)

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbound:
        return cls(Policy.from_settings(settings))

    def client(self, *, proxy: str = "", pool_connections: int, pool_maxsize: int) -> Client:
        """Connection pools through this layer; requests go through `proxy` when given."""
        return Client(self, proxy=proxy, pool_connections=pool_connections, pool_maxsize=pool_maxsize)

    # --- resolution and checks ---

    def resolve(self, host: str, port: int) -> list[AddrInfo]:
        """All addresses of `host`, each checked; raise DestinationNotAllowed if any is refused."""
        if _literal(host) is not None:
            # Numeric: parsed, never looked up (and scoped IPv6 literals keep their scope).
            numeric = socket.AI_NUMERICHOST
            infos = socket.getaddrinfo(host.strip("[]"), port, 0, socket.SOCK_STREAM, 0, numeric)
        else:
            family = urllib3.util.connection.allowed_gai_family()
            infos = list(self.resolver(host, port, family, socket.SOCK_STREAM))
        if not infos:
            raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
        for info in infos:
            self._check(str(info[4][0]), host)
        return infos

    def check_through_proxy(self, url: str) -> None:
        """Best effort for a request a proxy carries: check the target as we resolve it."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        literal = _literal(host)
        if literal is not None:
            self._check(str(literal), host)
            return
        if self.policy.allow_private_networks:
            return
        try:
            infos = self.resolver(host, parts.port or 0, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return  # the proxy may know names we do not; it resolves them in its own network
        for info in infos:
            self._check(str(info[4][0]), host)

    def _check(self, address: str, host: str) -> None:
        reason = check_address(address, self.policy)
        if reason is not None:
            plain = address.split("%", 1)[0]
            where = "" if _literal(host) is not None else f" for host {host}"
            raise DestinationNotAllowed(f"{NOT_ALLOWED}: {plain} ({reason}){where}{HOW_TO_ALLOW}")


Timeout = Union[float, tuple[float, float], urllib3.Timeout]  # noqa: UP007 (a runtime alias)
Response = urllib3.BaseHTTPResponse

#: requests' default for its adapters: no retries, and read errors raised as they are.
_NO_RETRIES = urllib3.Retry(0, read=False)
#: Chunk size of a body read in full, as requests' `Response.content` read it.
_CONTENT_CHUNK = 10 * 1024
#: A redirect's body is read (so its connection can be reused) up to this much, then dropped.
_REDIRECT_BODY_CAP = 64 * 1024
#: The most of an answer's body `Client.exchange` reads (a callback receiver's reply).
EXCHANGE_BODY_CAP = 64 * 1024


class Client:
    """Connection pools for requests through one `Outbound`: a pinning pool manager for
    direct requests, and one proxy manager per proxy URL. Thread-safe; shared by threads."""

    def __init__(
        self, outbound: Outbound, *, proxy: str = "", pool_connections: int, pool_maxsize: int
    ) -> None:
        self.outbound = outbound
        self._pool_kw: dict[str, Any] = {
            "num_pools": pool_connections,
            "maxsize": pool_maxsize,
            "block": False,
            # The shared context holds the CA bundle; a path here would reload it per connection.
            "cert_reqs": "CERT_REQUIRED",
            "ssl_context": outbound.ssl_context,
        }
        self._direct = _PinningPoolManager(outbound, **self._pool_kw)
        self._proxies: dict[str, str] = {"http": proxy, "https": proxy} if proxy else {}
        self._environ = _proxy_environment()
        self._no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
        self._managers: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._direct.clear()
        with self._lock:
            for manager in self._managers.values():
                manager.clear()
            self._managers.clear()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: Timeout,
        body: bytes | None = None,
        max_redirects: int = 0,
    ) -> Response:
        """One request, following up to `max_redirects` redirects, each hop checked anew; the
        response's body is left to read (`url` is the URL it came from, as prepared).

        Raises DestinationNotAllowed, InvalidRequest for a scheme other than http or https at
        any hop, TooManyRedirects beyond the cap, and the other RequestErrors.
        """
        hop_headers = headers
        for hop in range(max_redirects + 1):
            _require_http(url, redirected=hop > 0)
            response = self.open(method, url, headers=hop_headers, timeout=timeout, body=body)
            target = redirect_target(response)
            if target is None:
                return response
            _drain(response)
            next_url = requote_uri(urljoin(url, target))
            if should_strip_auth(url, next_url):
                hop_headers = {k: v for k, v in hop_headers.items() if k.title() not in CREDENTIAL_HEADERS}
            method, body, hop_headers = _redirected_method(response.status, method, body, hop_headers)
            url = next_url
        raise TooManyRedirects(f"Exceeded {max_redirects} redirects.")

    def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: Timeout,
        body: bytes | None = None,
        watched: Watched | None = None,
        body_cap: int = EXCHANGE_BODY_CAP,
    ) -> Response:
        """One request, redirects not followed: look at `status` and `reason`. The status is
        the answer: a body of at most `body_cap` bytes is read so its connection carries the
        next exchange; a longer, endless or broken one is abandoned with its connection (its
        errors are not the exchange's). `watched`: the watchdog entry bounding it all."""
        response = self.open(method, url, headers=headers, timeout=timeout, body=body)
        if watched is not None:
            watched.response = response
        try:
            _read_capped(response, body_cap)
        finally:
            close(response)
        return response

    def open(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: Timeout,
        body: bytes | None = None,
    ) -> Response:
        """One hop, as requests' Session.request(allow_redirects=False, stream=True) sent it."""
        prepared = prepare_url(url)
        body = body or None  # requests sent an empty body as none
        send_headers = _prepare_headers(headers, method, body, prepared)
        proxy = self._select_proxy(prepared) if self._proxies or self._environ else None
        if not prepared.lower().startswith(("http://", "https://")):
            raise InvalidRequest(f"No connection adapters were found for {prepared!r}")
        if proxy:
            self.outbound.check_through_proxy(prepared)
        parts = urlsplit(prepared)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidRequest(exc) from exc
        try:
            if proxy:
                pool = self._proxy_pool(proxy, scheme, parts.hostname, port)
            else:
                pool = self._direct.connection_from_host(parts.hostname, port, scheme)
        except LocationValueError as exc:
            raise InvalidRequest(exc) from exc
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        if proxy and scheme != "https" and not urlparse(proxy).scheme.lower().startswith("socks"):
            target = _defragauth(prepared)  # a forward proxy takes the absolute URL
        if not isinstance(timeout, urllib3.Timeout):
            connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
            timeout = urllib3.Timeout(connect=connect, read=read)
        response = _urlopen(pool, method, target, body, send_headers, timeout)
        response.url = prepared
        return response

    # --- proxies ---

    def _select_proxy(self, url: str) -> str | None:
        proxies = self._proxies
        if self._environ and not _bypass_proxies(url, self._environ, self._no_proxy):
            proxies = {**proxies, **self._environ}  # requests let the environment win
        return select_proxy(url, proxies) if proxies else None

    def _proxy_pool(self, proxy: str, scheme: str, host: str | None, port: int | None) -> Any:
        proxy = prepend_scheme_if_needed(proxy, "http")
        if not parse_url(proxy).host:
            raise InvalidRequest("Please check proxy URL. It is malformed and could be missing the host.")
        manager = self._managers.get(proxy)
        if manager is None:
            with self._lock:
                manager = self._managers.get(proxy)
                if manager is None:
                    manager = self._managers[proxy] = self._proxy_manager(proxy)
        return manager.connection_from_host(host, port, scheme)

    def _proxy_manager(self, proxy: str) -> urllib3.PoolManager:
        if proxy.lower().startswith("socks"):
            if importlib.util.find_spec("socks") is None:
                # Without PySocks every request through it fails alike: one clear, final
                # error (no retries, no urllib3 warning per attempt). The API refuses such
                # proxies; this is for those the original service stored. No credentials.
                scheme = proxy.partition(":")[0].lower()
                raise InvalidRequest(
                    f"{scheme} proxies are not supported (SOCKS is not available): "
                    "use an http:// or https:// proxy"
                )
            from urllib3.contrib.socks import SOCKSProxyManager

            username, password = get_auth_from_url(proxy)
            return SOCKSProxyManager(proxy, username=username, password=password, **self._pool_kw)
        headers: dict[str, str] = {}
        username, password = get_auth_from_url(proxy)
        if username:
            headers["Proxy-Authorization"] = basic_auth(username, password)
        # An HTTPS proxy is verified with the shared context too (requests left it to the
        # system's store, and refused plain-HTTP targets behind one).
        return urllib3.ProxyManager(
            proxy, proxy_headers=headers, proxy_ssl_context=self.outbound.ssl_context, **self._pool_kw
        )


def close(response: Response) -> None:
    """Done with a response: an unfinished body closes its connection (requests' Response.close)."""
    response.close()
    response.release_conn()


def _urlopen(
    pool: Any, method: str, target: str, body: bytes | None, headers: dict[str, str], timeout: urllib3.Timeout
) -> Response:
    """urllib3's urlopen as requests' HTTPAdapter.send called it, its errors as it raised them."""
    try:
        response: Response = pool.urlopen(
            method,
            target,
            body=body,
            headers=headers,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            retries=_NO_RETRIES,
            timeout=timeout,
            chunked=False,
        )
        return response
    except (ProtocolError, OSError) as exc:
        raise ConnectionFailed(exc) from exc
    except MaxRetryError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
            raise ConnectTimeout(exc) from exc
        if isinstance(reason, ResponseError):
            raise RequestError(exc) from exc
        if isinstance(reason, urllib3.exceptions.ProxyError):
            raise ProxyFailed(exc) from exc
        if isinstance(reason, urllib3.exceptions.SSLError):
            raise TLSError(exc) from exc
        raise ConnectionFailed(exc) from exc
    except ClosedPoolError as exc:
        raise ConnectionFailed(exc) from exc
    except urllib3.exceptions.ProxyError as exc:
        raise ProxyFailed(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise TLSError(exc) from exc
    except ReadTimeoutError as exc:
        raise ReadTimeout(exc) from exc
    except urllib3.exceptions.InvalidHeader as exc:
        raise InvalidRequest(exc) from exc


def _read_all(response: Response, *, lenient: bool = False) -> None:
    """Read a body to its end as requests' `Response.content` did; `lenient`: ignoring a body
    cut short or undecodable (a redirect's, whose body is of no use)."""
    try:
        for _ in response.stream(_CONTENT_CHUNK, decode_content=True):
            pass
    except (ProtocolError, DecodeError) as exc:
        if not lenient:
            raise BodyError(exc) from exc
    except ReadTimeoutError as exc:
        raise ConnectionFailed(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise TLSError(exc) from exc


def _read_capped(response: Response, cap: int) -> None:
    try:
        # read(amt) returns short only at the body's end, which hands the connection back
        if len(response.read(cap + 1, decode_content=False)) > cap:
            response.close()  # more than we take: the connection goes with the rest
    except (urllib3.exceptions.HTTPError, OSError):
        response.close()


def _drain(response: Response) -> None:
    """A redirect's body: read (small ones, so the connection goes back to the pool), or dropped."""
    try:
        length = response.length_remaining
        if length is not None and length <= _REDIRECT_BODY_CAP:
            _read_all(response, lenient=True)
    finally:
        close(response)


def redirect_target(response: Response) -> str | None:
    """The Location of a redirect (requests' rule: a redirect status with a Location)."""
    if response.status in REDIRECT_STATUSES:
        location = response.headers.get("location")
        if location is not None:
            # http.client decodes headers as latin-1; servers mostly send UTF-8.
            return location.encode("latin1").decode("utf8")
    return None


def _require_http(url: str, *, redirected: bool) -> None:
    reason = check_url(url)
    if reason is not None:
        prefix = "redirect to " if redirected else ""
        raise InvalidRequest(f"{prefix}{url}: {reason}")


def _redirected_method(
    status: int, method: str, data: bytes | None, headers: Mapping[str, str]
) -> tuple[str, bytes | None, Mapping[str, str]]:
    """Browsers' (and Go's) rule: 303, and 301/302 after a POST, continue as a GET without body."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        body_headers = ("Content-Type", "Content-Length", "Transfer-Encoding")
        return "GET", None, {k: v for k, v in headers.items() if k.title() not in body_headers}
    return method, data, headers


# --- what requests did to a request (its texts kept) ---------------------------------------------

_VALID_HEADER_NAME = re.compile(r"^[^:\s][^:\r\n]*\Z")
_VALID_HEADER_VALUE = re.compile(r"^\S[^\r\n]*\Z|^\Z")
_VALID_BYTES = {
    _VALID_HEADER_NAME: re.compile(rb"^[^:\s][^:\r\n]*\Z"),
    _VALID_HEADER_VALUE: re.compile(rb"^\S[^\r\n]*\Z|^\Z"),
}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


#: URLs that preparing leaves as they are: lower-case scheme and host (a name or IPv4 address,
#: no userinfo), a port without leading zeros, a non-empty path and maybe a non-empty query of
#: characters that need no quoting, no '%' escapes, no fragment (and no dot segments, checked
#: apart). Most URLs are such; the others take the full steps.
_SIMPLE_URL = re.compile(
    r"https?://[a-z0-9_-][a-z0-9._-]*(?::([1-9][0-9]{0,4}))?"
    r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]+)?\Z"
)


def prepare_url(url: str) -> str:
    """The URL as requests prepared it: parsed by urllib3, the host IDNA-encoded, `/` for an
    empty path, requoted; errors with requests' texts. Other schemes are returned as given."""
    simple = _SIMPLE_URL.match(url)
    if simple is not None and "/." not in url and int(simple.group(1) or 0) <= 65535:
        return url  # what the steps below make of it: nothing to normalize or quote
    url = url.lstrip()
    if ":" in url and not url.lower().startswith("http"):
        return url
    try:
        scheme, auth, host, port, path, query, fragment = parse_url(url)
    except LocationParseError as exc:
        raise InvalidRequest(*exc.args) from exc
    if not scheme:
        raise InvalidRequest(f"Invalid URL {url!r}: No scheme supplied. Perhaps you meant https://{url}?")
    if not host:
        raise InvalidRequest(f"Invalid URL {url!r}: No host supplied")
    if not host.isascii():
        try:
            host = _idna_encode(host)
        except UnicodeError as exc:
            raise InvalidRequest("URL has an invalid label.") from exc
    elif host.startswith(("*", ".")):
        raise InvalidRequest("URL has an invalid label.")
    netloc = f"{auth}@{host}" if auth else host
    if port:
        netloc += f":{port}"
    return requote_uri(urlunparse((scheme, netloc, path or "/", "", query, fragment)))


def _idna_encode(host: str) -> str:
    import idna

    try:
        return idna.encode(host, uts46=True).decode("utf-8")
    except idna.IDNAError as exc:
        raise UnicodeError from exc


def requote_uri(uri: str) -> str:
    """Percent-encode what must be, leaving reserved characters and valid escapes (requests')."""
    try:
        return quote(_unquote_unreserved(uri), safe="!#$%&'()*+,/:;=?@[]~")
    except ValueError:
        # An invalid escape: quote the '%' too.
        return quote(uri, safe="!#$&'()*+,/:;=?@[]~")


def _unquote_unreserved(uri: str) -> str:
    if "%" not in uri:
        return uri
    parts = uri.split("%")
    for i in range(1, len(parts)):
        h = parts[i][0:2]
        if len(h) == 2 and h.isalnum():
            c = chr(int(h, 16))  # ValueError: not hexadecimal
            parts[i] = c + parts[i][2:] if c in _UNRESERVED else f"%{parts[i]}"
        else:
            parts[i] = f"%{parts[i]}"
    return "".join(parts)


def _prepare_headers(headers: Mapping[str, str], method: str, body: bytes | None, url: str) -> dict[str, str]:
    """Validated headers, with Content-Length of a body and Basic auth of the URL's userinfo."""
    prepared: dict[str, str] = {}
    for name, value in headers.items():
        _validate_header_part(name, value, name, _VALID_HEADER_NAME, "name")
        _validate_header_part(name, value, value, _VALID_HEADER_VALUE, "value")
        prepared[name] = value
    if len(prepared) > 1 and len({name.lower() for name in prepared}) < len(prepared):
        prepared = _fold_case(prepared)  # requests kept one header per case-insensitive name
    if body is not None:
        _set_header(prepared, "Content-Length", str(len(body)))
    elif method not in ("GET", "HEAD") and _get_header(prepared, "Content-Length") is None:
        _set_header(prepared, "Content-Length", "0")
    if "@" in url:
        username, password = get_auth_from_url(url)
        if username or password:
            _set_header(prepared, "Authorization", basic_auth(username, password))
    return prepared


def _validate_header_part(
    name: object, value: object, part: object, valid: re.Pattern[str], kind: str
) -> None:
    matched: object
    if isinstance(part, str):
        matched = valid.match(part)
    elif isinstance(part, bytes):
        matched = _VALID_BYTES[valid].match(part)
    else:
        raise InvalidRequest(
            f"Header part ({part!r}) from {(name, value)} must be of type str or bytes, not {type(part)}"
        )
    if not matched:
        raise InvalidRequest(
            "Invalid leading whitespace, reserved character(s), or return character(s) "
            f"in header {kind}: {part!r}"
        )


def _fold_case(headers: Mapping[str, str]) -> dict[str, str]:
    folded: dict[str, tuple[str, str]] = {}
    for name, value in headers.items():
        key = name.lower()
        folded[key] = (name, value)
    return dict(folded.values())


def _get_header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    """Set `name`, replacing a header of any case in its place (requests' CaseInsensitiveDict)."""
    lower = name.lower()
    for key in headers:
        if key.lower() == lower:
            if key == name:
                headers[key] = value
            else:
                items = [(name, value) if k == key else (k, v) for k, v in headers.items()]
                headers.clear()
                headers.update(items)
            return
    headers[name] = value


def get_auth_from_url(url: str) -> tuple[str, str]:
    """(username, password) of the URL's userinfo, ("", "") unless both are there."""
    parsed = urlparse(url)
    if parsed.username is None or parsed.password is None:
        return "", ""
    return unquote(parsed.username), unquote(parsed.password)


def basic_auth(username: str, password: str) -> str:
    raw = b":".join((username.encode("latin1"), password.encode("latin1")))
    return "Basic " + base64.b64encode(raw).strip().decode("ascii")


def should_strip_auth(old_url: str, new_url: str) -> bool:
    """Whether a redirect from `old_url` to `new_url` leaves the credentials behind (requests' rule)."""
    old, new = urlparse(old_url), urlparse(new_url)
    if old.hostname != new.hostname:
        return True
    # http -> https on the standard ports keeps them.
    if old.scheme == "http" and old.port in (80, None) and new.scheme == "https" and new.port in (443, None):
        return False
    changed_port = old.port != new.port
    changed_scheme = old.scheme != new.scheme
    default_port = (_DEFAULT_PORTS.get(old.scheme), None)
    if not changed_scheme and old.port in default_port and new.port in default_port:
        return False
    return changed_port or changed_scheme


def select_proxy(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy for `url`: keyed by scheme://host, scheme, all://host or all (requests' rule)."""
    parts = urlparse(url)
    if parts.hostname is None:
        return proxies.get(parts.scheme, proxies.get("all"))
    for key in (f"{parts.scheme}://{parts.hostname}", parts.scheme, f"all://{parts.hostname}", "all"):
        if key in proxies:
            return proxies[key]
    return None


def prepend_scheme_if_needed(url: str, new_scheme: str) -> str:
    parsed = parse_url(url)
    scheme, auth, _host, _port, path, query, fragment = parsed
    netloc = parsed.netloc
    if not netloc:
        netloc, path = path, netloc
    if auth:
        netloc = f"{auth}@{netloc}"
    return urlunparse((scheme or new_scheme, netloc or "", path or "", "", query, fragment))


def _defragauth(url: str) -> str:
    scheme, netloc, path, params, query, _fragment = urlparse(url)
    if not netloc:
        netloc, path = path, netloc
    netloc = netloc.rsplit("@", 1)[-1]
    return urlunparse((scheme, netloc, path, params, query, ""))


def _proxy_environment() -> dict[str, str]:
    """The *_PROXY variables (urllib's reading of them, as requests read them), or {} when
    none of them could proxy an http(s) URL (NO_PROXY alone, FTP_PROXY...)."""
    proxies = urllib.request.getproxies_environment()
    usable = any(
        key in ("http", "https", "all") or key.startswith(("http://", "https://", "all://"))
        for key in proxies
    )
    return dict(proxies) if usable else {}


def _bypass_proxies(url: str, environ: Mapping[str, str], no_proxy: str | None) -> bool:
    """Whether NO_PROXY exempts `url` from the environment's proxies (requests' rule)."""
    hostname = urlparse(url).hostname
    if hostname is None:
        return True
    if no_proxy:
        hosts = [host for host in no_proxy.replace(" ", "").split(",") if host]
        if _is_ipv4_address(hostname):
            for proxy_ip in hosts:
                if _is_valid_cidr(proxy_ip):
                    if _address_in_network(hostname, proxy_ip):
                        return True
                elif hostname == proxy_ip:
                    return True
        else:
            port = urlparse(url).port
            host_with_port = f"{hostname}:{port}" if port else hostname
            for host in hosts:
                host = host.lstrip(".")
                if hostname == host or host_with_port == host:
                    return True
                host = "." + host
                if hostname.endswith(host) or host_with_port.endswith(host):
                    return True
    try:
        return bool(_proxy_bypass_environment(hostname, dict(environ)))
    except (TypeError, socket.gaierror):
        return False


#: urllib's NO_PROXY matching (what requests asked urllib on Linux), given the variables read
#: at start; not in the type stubs.
_proxy_bypass_environment: Callable[[str, dict[str, str]], Any] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


def _is_ipv4_address(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def _is_valid_cidr(text: str) -> bool:
    if text.count("/") != 1:
        return False
    address, _, bits = text.partition("/")
    try:
        mask = int(bits)
    except ValueError:
        return False
    return 1 <= mask <= 32 and _is_ipv4_address(address)


def _address_in_network(ip: str, net: str) -> bool:
    address, _, bits = net.partition("/")
    mask = (0xFFFFFFFF << (32 - int(bits))) & 0xFFFFFFFF
    as_int = int.from_bytes(socket.inet_aton(ip), "big")
    return (as_int & mask) == (int.from_bytes(socket.inet_aton(address), "big") & mask)


# --- urllib3 plumbing --------------------------------------------------------------------------


class _PinningPoolManager(urllib3.PoolManager):
    def __init__(self, outbound: Outbound, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outbound = outbound
        self.pool_classes_by_scheme = {"http": _PinnedHTTPPool, "https": _PinnedHTTPSPool}
        # (host, port, scheme) -> (pool key, request context): urllib3 builds both anew for
        # every request (~10 us); the pools themselves stay in its LRU container.
        self._keys: dict[tuple[str | None, int | None, str | None], tuple[Any, dict[str, Any]]] = {}

    def connection_from_host(
        self,
        host: str | None,
        port: int | None = None,
        scheme: str | None = "http",
        pool_kwargs: dict[str, Any] | None = None,
    ) -> urllib3.HTTPConnectionPool:
        if pool_kwargs is not None:
            return super().connection_from_host(host, port, scheme, pool_kwargs)
        asked = (host, port, scheme)
        cached = self._keys.get(asked)
        if cached is None:
            if not host:
                raise LocationValueError("No host specified.")
            context = self._merge_pool_kwargs(None)
            context["scheme"] = scheme or "http"
            if port is None:
                port = urllib3.connectionpool.port_by_scheme.get(context["scheme"].lower(), 80)
            context["port"] = port
            context["host"] = host
            key_fn = self.key_fn_by_scheme.get(context["scheme"].lower())
            if key_fn is None:
                raise urllib3.exceptions.URLSchemeUnknown(context["scheme"])
            if len(self._keys) >= 1024:
                self._keys.clear()
            cached = self._keys[asked] = (key_fn(context), context)
        return self.connection_from_pool_key(cached[0], request_context=cached[1])

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> urllib3.HTTPConnectionPool:
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        context["outbound"] = self.outbound  # handed by the pool to each connection it makes
        return super()._new_pool(scheme, host, port, context)


_waiting = threading.local()


def watch_header_waits(on_wait: Callable[[socket.socket], None] | None) -> None:
    """From now on in this thread (None: no longer), `on_wait(sock)` is called with the socket
    of every direct request about to wait for its response headers, so a watchdog can shut a
    server down that trickles its headers: until they are complete there is no response to
    abort, and a byte per second never trips a per-read timeout."""
    _waiting.hook = on_wait


@contextlib.contextmanager
def watching_sockets(on_wait: Callable[[socket.socket], None]) -> Iterator[None]:
    """`watch_header_waits` for the duration of a block."""
    watch_header_waits(on_wait)
    try:
        yield
    finally:
        watch_header_waits(None)


class Watched:
    """One exchange under a `Watchdog`: the socket it waits on, then its response."""

    def __init__(self) -> None:
        self.waiting_on: socket.socket | None = None
        self.response: Response | None = None
        self.expired = False

    def waiting(self, sock: socket.socket) -> None:
        self.waiting_on = sock

    def abort(self) -> None:
        self.expired = True
        shut_down(self.response, self.waiting_on)


def shut_down(response: Response | None, waiting_on: socket.socket | None) -> None:
    """Unblock a thread stuck in recv() of an exchange: on its response's socket, or, while
    the headers are still arriving, on the socket that waits for them."""
    sock = waiting_on
    if response is not None:
        connection: Any = getattr(response, "connection", None) or getattr(response, "_connection", None)
        sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Ends exchanges that outlive their total deadline by shutting their socket down, which
    unblocks the thread reading it: a per-read timeout cannot, as a server that trickles a byte
    a second never trips it. One thread per watchdog, started on first use, that sleeps until
    the earliest deadline (indefinitely while nothing is watched)."""

    def __init__(self, name: str = "outbound-watchdog") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._deadlines: dict[Watched, float] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = float("inf")  # when the thread wakes next on its own

    @contextlib.contextmanager
    def watch(self, seconds: float) -> Iterator[Watched]:
        """A `Watched` for an exchange made in this block (direct connections report their
        socket while they wait for headers), aborted `seconds` from now if still running."""
        watched = Watched()
        deadline = time.monotonic() + seconds
        with self._cond:
            self._deadlines[watched] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if deadline < self._wakes_at:  # rarely: exchanges share one timeout, so later ones fall due later
                self._cond.notify()
        try:
            with watching_sockets(watched.waiting):
                yield watched
        finally:
            with self._cond:
                self._deadlines.pop(watched, None)

    def abort_all(self) -> None:
        """Shutting down: end every exchange in flight now."""
        with self._cond:
            for watched in self._deadlines:
                self._deadlines[watched] = 0.0
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                overdue = [watched for watched, due in self._deadlines.items() if due <= now]
                for watched in overdue:
                    del self._deadlines[watched]
                    watched.abort()
                self._wakes_at = min(self._deadlines.values(), default=float("inf"))
                self._cond.wait(min(self._wakes_at, now + 3600.0) - now)


class _PinnedConnectionMixin:
    """Replaces urllib3's resolve-and-connect by resolve-check-connect to the checked addresses."""

    outbound: Outbound
    _dns_host: str
    host: str
    port: int
    timeout: float | None
    source_address: tuple[str, int] | None
    socket_options: Any

    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(_waiting, "hook", None)
        if hook is not None and self.sock is not None:
            hook(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]

    def _new_conn(self) -> socket.socket:
        try:
            infos = self.outbound.resolve(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except UnicodeError as exc:
            raise urllib3.exceptions.LocationParseError(f"'{self.host}', label empty or too long") from exc
        try:
            return _connect(infos, self.timeout, self.source_address, self.socket_options)
        except TimeoutError as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {exc}",
            ) from exc


class _UrllibName:
    """urllib3 puts `type(self).__name__` into its error texts, which reach job errors and
    callback texts: show its public class names there, not our private subclasses'."""

    public_name = ""

    def __str__(self) -> str:
        return f"{self.public_name}(host={getattr(self, 'host', '')!r}, port={getattr(self, 'port', None)!r})"


class _PinnedHTTPConnection(_UrllibName, _PinnedConnectionMixin, urllib3.connection.HTTPConnection):
    public_name = "HTTPConnection"

    def __init__(self, *args: Any, outbound: Outbound, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbound = outbound


class _PinnedHTTPSConnection(_UrllibName, _PinnedConnectionMixin, urllib3.connection.HTTPSConnection):
    public_name = "HTTPSConnection"

    def __init__(self, *args: Any, outbound: Outbound, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbound = outbound


class _PinnedHTTPPool(_UrllibName, urllib3.connectionpool.HTTPConnectionPool):
    public_name = "HTTPConnectionPool"
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(_UrllibName, urllib3.connectionpool.HTTPSConnectionPool):
    public_name = "HTTPSConnectionPool"
    ConnectionCls = _PinnedHTTPSConnection


def _shared_context(ca_file: str | None) -> ssl.SSLContext:
    context = urllib3.util.ssl_.create_urllib3_context()
    path = (
        ca_file or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    )
    if Path(path).is_dir():
        context.load_verify_locations(capath=path)
    else:
        context.load_verify_locations(cafile=path)
    return context


def _connect(
    infos: Sequence[AddrInfo], timeout: float | None, source: tuple[str, int] | None, options: Any
) -> socket.socket:
    """urllib3's create_connection, over addresses already resolved and checked."""
    error: OSError | None = None
    for family, socktype, proto, _name, sockaddr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            if source:
                sock.bind(source)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError("no address to connect to")
