"""The outbound layer against real servers on 127.0.0.1: refused destinations are never
connected to, a checked address is the one connected to (DNS rebinding), redirects are
checked hop by hop, TLS still verifies the hostname, and callbacks obey the same policy.

DNS is injected (`Outbound(resolver=...)`): tests cannot otherwise make a name resolve to
what they need. Everything else is real: sockets, HTTP, TLS.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.servers import RawServer, read_request_head

from downloader.delivery.notifying import HttpBackend, Message
from downloader.errors import DestinationNotAllowed, DownloadError, NotificationError
from downloader.fetching.download import Fetched, Fetcher, FetchLimits
from downloader.fetching.outbound import PERMISSIVE, Outbound, Policy
from downloader.version import __version__

pytestmark = pytest.mark.integration

PNG = (Path(__file__).parent.parent / "data" / "tiny.png").read_bytes()
LOOPBACK_ONLY = Policy.parse(False, "127.0.0.1/32")  # our servers, and nothing else private


# --- helpers -----------------------------------------------------------------------------------


class RawListener:
    """A listening socket nobody accepts from: any TCP connection made to it waits in the
    kernel's accept queue, so `connections()` counts exactly the connections made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.accepted
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()


Answer = tuple[int, Mapping[str, str], bytes]


class Server:
    """Threaded HTTP(S) server on 127.0.0.1 answering canned (status, headers, body) per
    path; records each request's path and headers and, with TLS, the SNI names asked for.
    As a proxy, it tunnels CONNECT host:port to 127.0.0.1:port."""

    def __init__(self, routes: Mapping[str, Answer] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Answer] = dict(routes or {})
        self.default: Answer | None = None
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.sni: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))  # keep-alive stays in step
                owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, headers, body = owner.routes.get(self.path) or owner.default or (404, {}, b"")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.do_GET()

            def do_CONNECT(self) -> None:
                owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                upstream = socket.create_connection(("127.0.0.1", int(self.path.rpartition(":")[2])))
                self.send_response(200)
                self.end_headers()
                _tunnel(self.connection, upstream)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)  # type: ignore[assignment,misc]
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tunnel(a: socket.socket, b: socket.socket) -> None:
    try:
        while True:
            ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select([a, b], [], [], 10)
                if not ready:
                    return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()


def redirect(location: str, status: int = 302) -> Answer:
    return status, {"Location": location}, b""


class FakeDNS:
    """A resolver with getaddrinfo's signature. Each name has a list of answers, one per
    lookup (the last one repeats); unknown names do not resolve."""

    def __init__(self, answers: Mapping[str, Sequence[Sequence[str]]]) -> None:
        self.answers = {name: [list(a) for a in seq] for name, seq in answers.items()}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0, *rest: Any) -> list[Any]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        queue = self.answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [_addrinfo(address, port) for address in addresses]


def _addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ipaddress.ip_address(address).version == 6:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def make_fetcher(outbound: Outbound, max_redirects: int = 10) -> Fetcher:
    limits = FetchLimits(connect_timeout=2, total_timeout=10, max_redirects=max_redirects, max_bytes=1 << 20)
    return Fetcher(limits, {"User-Agent": "Downloader-Test"}, pool_size=4, outbound=outbound)


def fetch(fetcher: Fetcher, url: str, tmp_path: Path, proxy: str = "", timeout: float = 0) -> Fetched:
    return fetcher.fetch(job_id="AbCdEfGhIjKlMn", url=url, proxy=proxy, job_headers=None, timeout=timeout,
                         tmp_dir=tmp_path, sniff=False, mime_pattern=None, cancelled=threading.Event())  # fmt: skip


def refused(call: Callable[[], object]) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        call()
    err = info.value
    assert not err.retriable and not err.internal and err.response_code == 0
    return err


@pytest.fixture
def listener() -> Iterator[RawListener]:
    raw = RawListener()
    yield raw
    raw.close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server({"/x": (200, {}, PNG)})
    yield srv
    srv.close()


# --- the default policy ---------------------------------------------------------------------


def test_the_default_policy_refuses_loopback_and_never_connects(
    listener: RawListener, tmp_path: Path
) -> None:
    fetcher = make_fetcher(Outbound())
    err = refused(lambda: fetch(fetcher, f"http://127.0.0.1:{listener.port}/x", tmp_path))
    assert err.phase == "validating destination"
    assert str(err) == (
        "Error while validating destination, destination address not allowed: 127.0.0.1 (loopback); "
        "allow it with DOWNLOADER_ALLOWED_NETWORKS or DOWNLOADER_ALLOW_PRIVATE_NETWORKS=true, "
        "retriable: false, internal: false"
    )
    # A name is resolved and its addresses checked the same way (localhost: 127.0.0.1 and/or ::1).
    err = refused(lambda: fetch(fetcher, f"http://localhost:{listener.port}/x", tmp_path))
    assert "destination address not allowed" in str(err) and "(loopback) for host localhost" in str(err)
    assert listener.connections() == 0
    assert not list(tmp_path.iterdir())

    # The control: a permissive layer does connect (and times out waiting for an answer),
    # so the zero above is a real "no connection", not a blind listener.
    with pytest.raises(DownloadError):
        fetch(
            make_fetcher(Outbound(PERMISSIVE)), f"http://127.0.0.1:{listener.port}/x", tmp_path, timeout=0.5
        )
    assert listener.connections() == 1


def test_a_name_with_any_non_public_address_is_refused(listener: RawListener, tmp_path: Path) -> None:
    # The first address is allowed and listening; the second is private: nothing connects.
    dns = FakeDNS({"mixed.test": [["127.0.0.1", "10.0.0.1"]]})
    fetcher = make_fetcher(Outbound(LOOPBACK_ONLY, resolver=dns))
    err = refused(lambda: fetch(fetcher, f"http://mixed.test:{listener.port}/x", tmp_path))
    assert "destination address not allowed: 10.0.0.1 (private) for host mixed.test" in str(err)
    assert listener.connections() == 0 and dns.calls == ["mixed.test"]


def test_a_public_looking_name_hiding_the_metadata_address_is_refused() -> None:
    dns = FakeDNS({"cdn.test": [["93.184.215.14", "2606:4700::1", "::ffff:169.254.169.254"]]})
    with pytest.raises(DestinationNotAllowed) as info:
        Outbound(resolver=dns).resolve("cdn.test", 80)
    assert str(info.value) == (
        "destination address not allowed: ::ffff:169.254.169.254 "
        "(link-local, IPv4-mapped 169.254.169.254) for host cdn.test; "
        "allow it with DOWNLOADER_ALLOWED_NETWORKS or DOWNLOADER_ALLOW_PRIVATE_NETWORKS=true"
    )
    dns = FakeDNS({"cdn.test": [["93.184.215.14", "2606:4700::1"]]})
    assert [info[4][0] for info in Outbound(resolver=dns).resolve("cdn.test", 80)] == [
        "93.184.215.14",
        "2606:4700::1",
    ]


def test_allowed_networks_let_a_download_through(server: Server, tmp_path: Path) -> None:
    got = fetch(make_fetcher(Outbound(LOOPBACK_ONLY)), f"http://127.0.0.1:{server.port}/x", tmp_path)
    assert got.path.read_bytes() == PNG


# --- DNS rebinding ------------------------------------------------------------------------------


def test_the_connection_goes_to_the_checked_address(server: Server, tmp_path: Path) -> None:
    """First answer 127.0.0.1 (allowed), any later one 10.0.0.1 (refused): the name is
    resolved once per connection and that checked answer is what we connect to."""
    dns = FakeDNS({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    outbound = Outbound(LOOPBACK_ONLY, resolver=dns)
    got = fetch(make_fetcher(outbound), f"http://rebind.test:{server.port}/x", tmp_path)
    assert got.path.read_bytes() == PNG
    assert dns.calls == ["rebind.test"]  # no second lookup between check and connect
    path, headers = server.seen[0]
    assert path == "/x" and headers["host"] == f"rebind.test:{server.port}"  # the name, not the address
    # The answer a second lookup would have given is refused.
    with pytest.raises(DestinationNotAllowed, match=r"10\.0\.0\.1 \(private\) for host rebind.test"):
        outbound.resolve("rebind.test", server.port)


# --- redirects ----------------------------------------------------------------------------------


def test_a_redirect_to_the_metadata_endpoint_is_refused_at_the_hop(
    server: Server, listener: RawListener, tmp_path: Path
) -> None:
    dns = FakeDNS({"inner.test": [["127.0.0.1", "10.0.0.1"]], "metadata.internal": [["169.254.169.254"]]})
    server.routes["/meta"] = redirect("http://169.254.169.254/latest/meta-data/")
    server.routes["/meta-name"] = redirect("http://metadata.internal/latest/meta-data/")
    server.routes["/inner"] = redirect(f"http://inner.test:{listener.port}/admin")
    fetcher = make_fetcher(Outbound(LOOPBACK_ONLY, resolver=dns))
    base = f"http://127.0.0.1:{server.port}"

    err = refused(lambda: fetch(fetcher, f"{base}/meta", tmp_path))
    assert "destination address not allowed: 169.254.169.254 (link-local)" in str(err)
    err = refused(lambda: fetch(fetcher, f"{base}/meta-name", tmp_path))
    assert "169.254.169.254 (link-local) for host metadata.internal" in str(err)
    # A hop whose first address is our listener: refused for its second, never connected.
    err = refused(lambda: fetch(fetcher, f"{base}/inner", tmp_path))
    assert "10.0.0.1 (private) for host inner.test" in str(err)
    assert listener.connections() == 0
    assert server.paths() == ["/meta", "/meta-name", "/inner"]


def test_redirects_are_capped(server: Server, tmp_path: Path) -> None:
    for n in range(11):
        server.routes[f"/r{n}"] = redirect(f"/r{n + 1}")  # relative, resolved against the hop
    server.routes["/r11"] = (200, {}, PNG)
    fetcher = make_fetcher(Outbound(LOOPBACK_ONLY), max_redirects=10)
    base = f"http://127.0.0.1:{server.port}"

    assert fetch(fetcher, f"{base}/r1", tmp_path).path.read_bytes() == PNG  # 10 redirects
    server.seen.clear()
    with pytest.raises(DownloadError) as info:
        fetch(fetcher, f"{base}/r0", tmp_path)  # 11 redirects
    assert "Exceeded 10 redirects" in str(info.value)
    assert server.paths() == [f"/r{n}" for n in range(11)]  # the 11th Location was not requested


def test_credentials_do_not_follow_a_redirect_to_another_host(tmp_path: Path) -> None:
    first, second = Server(), Server({"/x": (200, {}, PNG)})
    dns = FakeDNS({"a.test": [["127.0.0.1"]], "b.test": [["127.0.0.1"]]})
    first.routes["/go"] = redirect(f"http://b.test:{second.port}/x", 307)
    client = Outbound(LOOPBACK_ONLY, resolver=dns).client(pool_connections=2, pool_maxsize=2)
    try:
        headers = {"Authorization": "Bearer s3cret", "X-Job": "1"}
        url = f"http://a.test:{first.port}/go"
        with client.request("GET", url, headers=headers, timeout=5, max_redirects=3) as resp:
            assert resp.status == 200 and resp.url == f"http://b.test:{second.port}/x"
    finally:
        first.close()
        second.close()
    assert first.seen[0][1]["authorization"] == "Bearer s3cret"
    assert "authorization" not in second.seen[0][1] and second.seen[0][1]["x-job"] == "1"


# --- schemes ------------------------------------------------------------------------------------


def test_only_http_and_https_at_every_hop(server: Server, listener: RawListener, tmp_path: Path) -> None:
    fetcher = make_fetcher(Outbound(PERMISSIVE))  # even when every address is allowed
    err = refused(lambda: fetch(fetcher, f"ftp://127.0.0.1:{listener.port}/x", tmp_path))
    assert err.phase == "creating request" and 'unsupported protocol scheme "ftp"' in str(err)
    for scheme in ("ftp", "gopher", "file"):
        server.routes[f"/to-{scheme}"] = redirect(f"{scheme}://127.0.0.1:{listener.port}/x")
        url = f"http://127.0.0.1:{server.port}/to-{scheme}"
        err = refused(lambda url=url: fetch(fetcher, url, tmp_path))  # type: ignore[misc]
        assert f"redirect to {scheme}://" in str(err) and f'unsupported protocol scheme "{scheme}"' in str(
            err
        )
    assert listener.connections() == 0


# --- proxies -------------------------------------------------------------------------------------


def test_targets_behind_a_proxy_are_checked_as_we_resolve_them(tmp_path: Path) -> None:
    proxy = Server()
    proxy.default = (200, {}, PNG)  # a forward proxy: answers any absolute URL
    dns = FakeDNS({"public.test": [["93.184.215.14"]], "private.test": [["10.1.2.3"]]})
    fetcher = make_fetcher(Outbound(resolver=dns))  # the strict default...
    via = f"http://127.0.0.1:{proxy.port}"  # ...yet the operator's proxy on loopback is used
    try:
        err = refused(lambda: fetch(fetcher, "http://169.254.169.254/latest/", tmp_path, proxy=via))
        assert "destination address not allowed: 169.254.169.254 (link-local)" in str(err)
        err = refused(lambda: fetch(fetcher, "http://private.test/a.png", tmp_path, proxy=via))
        assert "10.1.2.3 (private) for host private.test" in str(err)
        assert proxy.seen == []
        fetch(fetcher, "http://public.test/a.png", tmp_path, proxy=via)
        fetch(fetcher, "http://unknown.test/a.png", tmp_path, proxy=via)  # the proxy may know it
    finally:
        proxy.close()
    assert proxy.paths() == ["http://public.test/a.png", "http://unknown.test/a.png"]


def test_an_https_proxy_is_verified_with_our_ca_and_carries_both_schemes(
    pki_all: tuple[Path, ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> None:
    ca_file, origin_tls, proxy_tls = pki_all
    origin = Server({"/x": (200, {}, PNG)}, tls=origin_tls)
    proxy = Server(tls=proxy_tls)
    proxy.default = (200, {}, PNG)  # a forward proxy for http targets; CONNECT for https ones
    dns = FakeDNS({"files.test": [["127.0.0.1"]], "plain.test": [["127.0.0.1"]]})
    via = f"https://127.0.0.1:{proxy.port}"
    fetcher = make_fetcher(Outbound(LOOPBACK_ONLY, resolver=dns, ca_file=str(ca_file)))
    untrusting = make_fetcher(Outbound(LOOPBACK_ONLY, resolver=dns))  # the default bundle only
    try:
        plain = fetch(fetcher, "http://plain.test/a.png", tmp_path, proxy=via).path.read_bytes()
        secure = fetch(fetcher, f"https://files.test:{origin.port}/x", tmp_path, proxy=via).path.read_bytes()
        with pytest.raises(DownloadError) as info:
            fetch(untrusting, "http://plain.test/a.png", tmp_path, proxy=via)
    finally:
        origin.close()
        proxy.close()
    assert plain == PNG and secure == PNG
    assert proxy.paths() == ["http://plain.test/a.png", f"files.test:{origin.port}"]
    assert origin.paths() == ["/x"] and origin.sni == ["files.test"]  # TLS to the origin, inside the tunnel
    err = info.value
    assert (
        err.retriable and "Unable to connect to proxy" in str(err) and "CERTIFICATE_VERIFY_FAILED" in str(err)
    )


def test_environment_proxies_win_over_the_aggregations_unless_no_proxy_matches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As requests chose: HTTP_PROXY and friends first, then the aggregation's proxy; NO_PROXY
    exempts a host from the environment's. Read when the fetcher first uses a proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    from_env, aggregations = Server(), Server()
    from_env.default = aggregations.default = (200, {}, PNG)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{from_env.port}")
    monkeypatch.setenv("NO_PROXY", "direct.test")
    dns = FakeDNS({"a.test": [["93.184.215.14"]], "direct.test": [["93.184.215.14"]]})
    fetcher = make_fetcher(Outbound(resolver=dns))
    backend = HttpBackend(5, 2)
    try:
        via = f"http://127.0.0.1:{aggregations.port}"
        fetch(fetcher, "http://a.test/1.png", tmp_path, proxy=via)
        fetch(fetcher, "http://direct.test/2.png", tmp_path, proxy=via)
        backend.deliver(Message("AbCdEfGhIjKlMn", "http://93.184.215.14/cb", b"{}"))
    finally:
        backend.close()
        from_env.close()
        aggregations.close()
    assert from_env.paths() == ["http://a.test/1.png", "http://93.184.215.14/cb"]
    assert aggregations.paths() == ["http://direct.test/2.png"]


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki_all(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext, ssl.SSLContext]:
    """A CA file, a server context with a certificate for files.test signed by it, and one for
    the address 127.0.0.1 (a proxy's) signed by it."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Outbound Test CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def server_context(name: str, san: x509.GeneralName) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        (d / f"{name}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / f"{name}.pem", d / f"{name}.key")
        return ctx

    files = server_context("files.test", x509.DNSName("files.test"))
    proxy = server_context("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return d / "ca.pem", files, proxy


@pytest.fixture
def pki(pki_all: tuple[Path, ssl.SSLContext, ssl.SSLContext]) -> tuple[Path, ssl.SSLContext]:
    """A CA file, and a server context with a certificate for files.test signed by it."""
    return pki_all[0], pki_all[1]


def test_https_to_a_pinned_address_verifies_the_hostname(
    pki: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    ca_file, server_tls = pki
    srv = Server({"/x": (200, {}, PNG)}, tls=server_tls)
    dns = FakeDNS({"files.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    outbound = Outbound(LOOPBACK_ONLY, resolver=dns, ca_file=str(ca_file))
    fetcher = make_fetcher(outbound)
    try:
        got = fetch(fetcher, f"https://files.test:{srv.port}/x", tmp_path)
        # Same address, other name: the certificate is checked against the name we asked for.
        err = refused(lambda: fetch(fetcher, f"https://other.test:{srv.port}/x", tmp_path))
        assert "TLS Error occured" in str(err) and "other.test" in str(err)
        err = refused(lambda: fetch(fetcher, f"https://127.0.0.1:{srv.port}/x", tmp_path))
        assert "TLS Error occured" in str(err)
        # Every connection uses the one context built at start (the CA bundle is loaded once).
        client = outbound.client(pool_connections=1, pool_maxsize=1)
        url = f"https://files.test:{srv.port}/x"
        with client.request("GET", url, headers={}, timeout=5) as resp:
            assert resp.connection is not None and resp.connection.sock is not None
            assert resp.connection.sock.context is outbound.ssl_context  # type: ignore[attr-defined]
    finally:
        srv.close()
    assert got.path.read_bytes() == PNG
    assert (
        srv.sni[0] == "files.test" and srv.sni[1] == "other.test" and srv.sni[2] is None
    )  # no SNI for an IP
    assert srv.seen[0] == ("/x", {**srv.seen[0][1], "host": f"files.test:{srv.port}"})


def test_userinfo_becomes_basic_auth_that_stays_behind_on_another_host(tmp_path: Path) -> None:
    first, second = Server(), Server({"/x": (200, {}, PNG)})
    dns = FakeDNS({"a.test": [["127.0.0.1"]], "b.test": [["127.0.0.1"]]})
    first.routes["/go"] = redirect(f"http://b.test:{second.port}/x")
    try:
        got = fetch(make_fetcher(Outbound(LOOPBACK_ONLY, resolver=dns)), f"http://us%C3%A9r:p%40ss@a.test:{first.port}/go",
                    tmp_path)  # fmt: skip
    finally:
        first.close()
        second.close()
    assert (
        first.seen[0][1]["authorization"]
        == "Basic " + base64.b64encode("usér:p@ss".encode("latin1")).decode()
    )
    assert "authorization" not in second.seen[0][1]
    assert got.final_url == f"http://b.test:{second.port}/x" and got.path.read_bytes() == PNG


def test_transport_errors_keep_urllib3s_texts_with_its_public_class_names(tmp_path: Path) -> None:
    """What jobs and callbacks have always shown (requests passed urllib3's texts on)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens: connection refused
    cause = (f"HTTPConnectionPool(host='127.0.0.1', port={port}): Max retries exceeded with url: /x (Caused by "
             f"NewConnectionError(\"HTTPConnection(host='127.0.0.1', port={port}): Failed to establish a new "
             f"connection: [Errno 111] Connection refused\"))")  # fmt: skip
    with pytest.raises(DownloadError) as download:
        fetch(make_fetcher(Outbound(PERMISSIVE)), f"http://127.0.0.1:{port}/x", tmp_path)
    assert str(download.value) == f"Error while performing request, {cause}, retriable: true, internal: false"
    backend = HttpBackend(5, 2, PERMISSIVE)
    try:
        with pytest.raises(NotificationError) as callback:
            backend.deliver(Message("AbCdEfGhIjKlMn", f"http://127.0.0.1:{port}/x", b"{}"))
    finally:
        backend.close()
    assert str(callback.value) == f'Post "http://127.0.0.1:{port}/x": {cause}'


# --- callbacks -------------------------------------------------------------------------------------


def test_callbacks_obey_the_same_policy(listener: RawListener) -> None:
    backend = HttpBackend(5, 2)  # the strict default
    url = f"http://127.0.0.1:{listener.port}/cb"
    try:
        with pytest.raises(NotificationError) as info:
            backend.deliver(Message("AbCdEfGhIjKlMn", url, b"{}"))
    finally:
        backend.close()
    assert str(info.value) == (
        f'Post "{url}": destination address not allowed: 127.0.0.1 (loopback); '
        "allow it with DOWNLOADER_ALLOWED_NETWORKS or DOWNLOADER_ALLOW_PRIVATE_NETWORKS=true"
    )
    assert listener.connections() == 0


def test_callback_redirects_are_not_followed(listener: RawListener) -> None:
    srv = Server()
    srv.default = redirect(f"http://127.0.0.1:{listener.port}/elsewhere", 307)
    backend = HttpBackend(5, 2, LOOPBACK_ONLY)
    try:
        with pytest.raises(NotificationError) as info:
            backend.deliver(Message("AbCdEfGhIjKlMn", f"http://127.0.0.1:{srv.port}/cb", b"{}"))
        srv.default = (204, {}, b"")
        backend.deliver(Message("AbCdEfGhIjKlMn", f"http://127.0.0.1:{srv.port}/cb", b"{}"))
    finally:
        backend.close()
        srv.close()
    assert str(info.value) == "Received Status: 307 Temporary Redirect"
    assert listener.connections() == 0 and srv.paths() == ["/cb", "/cb"]


def test_a_callback_request_is_what_it_was(server: Server) -> None:
    """The POST as requests sent it: our headers, the body's length, identity encoding, the
    Host; a non-2xx answer is read and named; unsupported URLs get requests' texts."""
    backend = HttpBackend(5, 2, LOOPBACK_ONLY)
    url = f"http://127.0.0.1:{server.port}/x"
    body = b'{"job_id":"AbCdEfGhIjKlMn"}'
    try:
        backend.deliver(Message("AbCdEfGhIjKlMn", url, body, {"X-Downloader-Delivery": "AbCdEfGhIjKlMn.1"}))
        with pytest.raises(NotificationError) as missing:
            backend.deliver(Message("AbCdEfGhIjKlMn", f"http://127.0.0.1:{server.port}/nope", body))
        with pytest.raises(NotificationError) as other_scheme:
            backend.deliver(Message("AbCdEfGhIjKlMn", "ftp://127.0.0.1/cb", body))
        with pytest.raises(NotificationError) as no_scheme:
            backend.deliver(Message("AbCdEfGhIjKlMn", "/cb", body))
    finally:
        backend.close()
    path, headers = server.seen[0]
    assert path == "/x" and headers == {
        "host": f"127.0.0.1:{server.port}",
        "accept-encoding": "identity",
        "x-downloader-delivery": "AbCdEfGhIjKlMn.1",
        "content-type": "application/json",
        "user-agent": f"Downloader/{__version__}",
        "content-length": str(len(body)),
    }
    assert str(missing.value) == "Received Status: 404 Not Found"
    assert str(other_scheme.value) == \
        "Post \"ftp://127.0.0.1/cb\": No connection adapters were found for 'ftp://127.0.0.1/cb'"  # fmt: skip
    assert str(no_scheme.value) == \
        "Post \"/cb\": Invalid URL '/cb': No scheme supplied. Perhaps you meant https:///cb?"  # fmt: skip


class _Answering(RawServer):
    """Answers every request of a connection with `answer(conn)`."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        def serve(conn: socket.socket) -> None:
            while read_request_head(conn) is not None:
                answer(conn)

        super().__init__(serve)
        self.url = f"http://127.0.0.1:{self.port}/cb"


def test_a_callback_has_one_total_deadline_however_slowly_the_receiver_trickles() -> None:
    """A status line a byte every 0.2 s never trips a per-read timeout; the whole delivery is
    cut at its timeout all the same, with the text Go's client gave."""

    def trickle(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X" * 1000:
            time.sleep(0.2)
            conn.sendall(bytes([byte]))

    receiver = _Answering(trickle)
    backend = HttpBackend(1.5, 2, LOOPBACK_ONLY)
    started = time.monotonic()
    try:
        with pytest.raises(NotificationError) as info:
            backend.deliver(Message("AbCdEfGhIjKlMn", receiver.url, b"{}"))
    finally:
        backend.close()
        receiver.close()
    took = time.monotonic() - started
    assert str(info.value) == (
        f'Post "{receiver.url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    )
    assert 1.5 <= took < 3.0, took


def test_the_status_decides_and_only_a_small_body_is_read() -> None:
    """A 2xx delivers even when its body never ends: 64 KiB are read, then the connection is
    dropped. A small body is read to its end and the connection carries the next callback."""
    block = b"x" * 65536
    sent = {"endless": 0}

    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        while True:
            conn.sendall(block)
            sent["endless"] += len(block)

    def small(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    endless_receiver, small_receiver = _Answering(endless), _Answering(small)
    backend = HttpBackend(10, 2, LOOPBACK_ONLY)
    started = time.monotonic()
    try:
        backend.deliver(Message("AbCdEfGhIjKlMn", endless_receiver.url, b"{}"))
        endless_took = time.monotonic() - started
        backend.deliver(Message("AbCdEfGhIjKlMn", endless_receiver.url, b"{}"))
        for _ in range(3):
            backend.deliver(Message("AbCdEfGhIjKlMn", small_receiver.url, b"{}"))
    finally:
        backend.close()
        endless_receiver.close()
        small_receiver.close()
    assert endless_took < 2.0  # not the 10 s timeout: the status was enough
    assert endless_receiver.connections == 2  # an abandoned body takes its connection along
    assert small_receiver.connections == 1  # kept alive across three callbacks


def test_a_refusal_is_immediate(tmp_path: Path) -> None:
    started = time.monotonic()
    refused(lambda: fetch(make_fetcher(Outbound()), "http://[fd00:ec2::254]/latest/meta-data/", tmp_path))
    assert time.monotonic() - started < 0.5  # decided before any socket exists


# --- the processes ------------------------------------------------------------------------------


def test_processes_under_the_default_policy_reach_nothing_local(
    stack: Any, files: Any, callbacks: Any
) -> None:
    """Worker and notifier built from the settings, with DOWNLOADER_ALLOW_PRIVATE_NETWORKS unset."""
    from support.procs import aggr_id, job_body
    from support.servers import wait_until

    api, _, _ = stack.all_three(allow_private_networks=None)
    job_id = api.post_job(job_body(files.url("sample-1.jpg"), aggr_id("ssrf"), callbacks.url, max_retries=3))
    job = wait_until(
        lambda: (h := stack.db.hgetall(f"job:{job_id}")).get("CallbackState") == "Failed" and h,
        30,
        "the download and then its callback to fail",
    )
    assert job["DownloadState"] == "Failed" and job["DownloadCount"] == "1"  # terminal: no retries
    assert job["DownloadMeta"].startswith(
        "Error while validating destination, destination address not allowed: 127.0.0.1 (loopback)"
    )
    assert "destination address not allowed: 127.0.0.1 (loopback)" in job["CallbackMeta"]
    assert files.seen() == [] and callbacks.all() == []
    # Counted where operators look (the original's stats JSON, and so the metrics).
    assert (
        wait_until(lambda: stack.stats("processor").get("destinationNotAllowed"), 10, "the worker's count")
        == 1
    )
    assert (
        wait_until(lambda: stack.stats("notifier").get("destinationNotAllowed"), 10, "the notifier's count")
        >= 1
    )


def test_up_allows_private_networks_by_default_and_says_so(
    stack: Any, files: Any, callbacks: Any, tmp_path: Path
) -> None:
    from support.procs import aggr_id, free_port, job_body

    cwd = tmp_path / "here"
    cwd.mkdir()
    port = free_port()
    up = stack.up(cwd, port, allow_private_networks=None)
    resp = requests.post(
        f"http://127.0.0.1:{port}/download",
        json=job_body(files.url("sample-1.jpg"), aggr_id("up"), callbacks.url),
        timeout=15,
    )
    assert resp.status_code == 201, resp.text
    assert callbacks.wait_for(resp.json()["id"], timeout=30)["success"] is True  # download and callback
    assert "allowing downloads and callbacks to private networks (local use" in up.output()
