"""The one outbound HTTP layer of downloads and HTTP callbacks: no request reaches a non-public address.

Strangers choose the URLs we fetch and clients the URLs we POST to, while we run next to cloud
metadata endpoints and internal services (server-side request forgery). So:

* Every new connection resolves its host ONCE (`getaddrinfo`, all addresses; the resolver is
  injectable), refuses the whole destination if ANY address is not public (`check_address`),
  and connects to those checked addresses themselves. Nothing resolves the name a second time,
  so a DNS answer that changes between check and connect (DNS rebinding) cannot slip through.
* How: `GuardedAdapter` (a requests HTTPAdapter) builds its urllib3 pools with connection
  classes whose `_new_conn` (the one place urllib3 turns host:port into a socket) is replaced
  by resolve-check-connect. The connection's `host` stays the URL's hostname, so the Host
  header, TLS SNI and certificate verification all still use the name, not the address.
  Keep-alive connections are reused only for the same scheme/host/port, i.e. an already
  checked address. A refusal is raised before any socket exists: the target sees nothing.
* Redirects are followed by hand (`Outbound.send`): each hop is a new request through the same
  adapter (so re-resolved and re-checked), only http/https at every hop, at most
  `max_redirects` hops; credentials are dropped when the host changes, as requests does.
* Proxies (an aggregation's proxy, or HTTP(S)_PROXY from the environment): the proxy resolves
  the target, so its address cannot be pinned. The proxy itself is the operator's choice and is
  not checked. Before a request goes through a proxy we check the target as WE resolve it: an
  IP-literal target is checked exactly; a hostname is best effort (the proxy may resolve it
  differently, and a name we cannot resolve is left to the proxy).
* TLS: one SSLContext (CA bundle loaded once) is shared by all pools of an `Outbound`; loading
  the bundle per connection costs ~60 ms of CPU (DESIGN.md). It trusts `ca_file`, else the
  bundle requests would use (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urljoin, urlsplit

import certifi
import requests
import requests.adapters
import requests.exceptions
import requests.utils
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util.connection
import urllib3.util.ssl_

from downloader.errors import ConfigurationError, DestinationNotAllowed

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

    from downloader.settings import Settings

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007 (a runtime alias)
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # noqa: UP007
#: `socket.getaddrinfo`'s answer: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[Any, Any, int, str, Any]
#: Called as `resolver(host, port, family, socket.SOCK_STREAM)`, like `socket.getaddrinfo`.
Resolver = Callable[..., Sequence[AddrInfo]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
NOT_ALLOWED = "destination address not allowed"
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
        networks = []
        for text in filter(None, (part.strip() for part in allowed_networks.split(","))):
            try:
                networks.append(ipaddress.ip_network(text))
            except ValueError as exc:
                raise ConfigurationError(f"invalid setting DOWNLOADER_ALLOWED_NETWORKS: {exc}") from exc
        return cls(allow_private_networks, tuple(networks))

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


# --- the layer -----------------------------------------------------------------------------


class Outbound:
    """Resolution, checks, pinned connections, TLS context and redirects for one process."""

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

    def mount(self, session: requests.Session, *, pool_connections: int, pool_maxsize: int) -> None:
        """Route the session's http and https requests through this layer."""
        adapter = GuardedAdapter(self, pool_connections=pool_connections, pool_maxsize=pool_maxsize)
        session.mount("http://", adapter)
        session.mount("https://", adapter)

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
            raise DestinationNotAllowed(f"{NOT_ALLOWED}: {plain} ({reason}){where}")

    # --- requests with redirects followed by hand ---

    def send(
        self,
        session: requests.Session,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float | tuple[float, float],
        stream: bool = False,
        data: bytes | None = None,
        max_redirects: int = 0,
    ) -> requests.Response:
        """One request, following up to `max_redirects` redirects, each hop checked anew.

        Raises DestinationNotAllowed, requests' InvalidSchema for a scheme other than http or
        https at any hop, TooManyRedirects beyond the cap, and requests' other errors.
        """
        hop_headers = dict(headers)
        for hop in range(max_redirects + 1):
            _require_http(url, redirected=hop > 0)
            response = session.request(
                method, url, headers=hop_headers, data=data, timeout=timeout, stream=stream,
                allow_redirects=False,
            )  # fmt: skip
            target = session.get_redirect_target(response)
            if target is None:
                return response
            response.close()  # not drained: a hostile body could be endless
            next_url = requests.utils.requote_uri(urljoin(url, target))
            if session.should_strip_auth(url, next_url):  # type: ignore[no-untyped-call]
                hop_headers = {k: v for k, v in hop_headers.items() if k.title() not in CREDENTIAL_HEADERS}
            method, data, hop_headers = _redirected_method(response.status_code, method, data, hop_headers)
            url = next_url
        raise requests.exceptions.TooManyRedirects(f"Exceeded {max_redirects} redirects.")


def _require_http(url: str, *, redirected: bool) -> None:
    reason = check_url(url)
    if reason is not None:
        prefix = "redirect to " if redirected else ""
        raise requests.exceptions.InvalidSchema(f"{prefix}{url}: {reason}")


def _redirected_method(
    status: int, method: str, data: bytes | None, headers: dict[str, str]
) -> tuple[str, bytes | None, dict[str, str]]:
    """Browsers' (and Go's) rule: 303, and 301/302 after a POST, continue as a GET without body."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        body_headers = ("Content-Type", "Content-Length", "Transfer-Encoding")
        return "GET", None, {k: v for k, v in headers.items() if k.title() not in body_headers}
    return method, data, headers


# --- requests/urllib3 plumbing -----------------------------------------------------------------


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose direct connections are pinned and whose proxied ones are pre-checked."""

    def __init__(self, outbound: Outbound, *, pool_connections: int, pool_maxsize: int) -> None:
        self.outbound = outbound  # set first: HTTPAdapter.__init__ calls init_poolmanager
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PinningPoolManager(
            self.outbound, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url or ""
        if requests.utils.select_proxy(url, proxies):
            self.outbound.check_through_proxy(url)
        return super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if verify is not False:
            # The shared context holds the CA bundle; a path here would reload it per connection.
            pool_kwargs["ssl_context"] = self.outbound.ssl_context
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        if verify is not False and url.lower().startswith("https"):
            conn.ca_certs = None  # as above: requests sets the bundle's path on every pool
            conn.ca_cert_dir = None


class _PinningPoolManager(urllib3.PoolManager):
    def __init__(self, outbound: Outbound, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outbound = outbound
        self.pool_classes_by_scheme = {"http": _PinnedHTTPPool, "https": _PinnedHTTPSPool}

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> urllib3.HTTPConnectionPool:
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        context["outbound"] = self.outbound  # handed by the pool to each connection it makes
        return super()._new_pool(scheme, host, port, context)


_waiting = threading.local()


@contextlib.contextmanager
def watching_sockets(on_wait: Callable[[socket.socket], None]) -> Iterator[None]:
    """Within this block, `on_wait(sock)` is called (in this thread) with the socket of every
    request about to wait for its response headers, so a watchdog can shut a server down
    that trickles its headers: until they are complete there is no response to abort, and a
    byte per second never trips a per-read timeout."""
    _waiting.hook = on_wait
    try:
        yield
    finally:
        _waiting.hook = None


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
