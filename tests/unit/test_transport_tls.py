"""TLS transport on loopback: handshake, client certificates, server verification, reload, reply_no_connect,
and the ``[tls]`` configuration.

Certificates are made per test with trustme; peers are trio SSL streams over real loopback sockets.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509

from tests.unit.transport_support import TIMEOUT, flow_of, source_of
from trioproxy.config import ConfigError, load_config, parse_listen
from trioproxy.server import build_tls
from trioproxy.sip import (
    Keepalive,
    Request,
    Response,
    StreamFramer,
    make_response,
    new_branch,
    parse_message_untrusted,
)
from trioproxy.transport import (
    Listen,
    TLSContexts,
    TLSSettings,
    TransportConfig,
    TransportError,
    Transports,
    stamp_via,
)


def request(method: str = "OPTIONS", call_id: str = "tls-test", port: int = 5061) -> bytes:
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:{port};branch={new_branch()};rport\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()


@dataclass
class Pki:
    ca: trustme.CA
    dir: Path

    def issue(self, name: str, *identities: str, ca: trustme.CA | None = None) -> tuple[str, str, int]:
        """Write a certificate for ``identities`` (and its key); return the two paths and its serial."""
        cert = (ca or self.ca).issue_cert(*identities)
        chain, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        serial = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number
        return str(chain), str(key), serial

    @property
    def ca_path(self) -> str:
        path = self.dir / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def client_context(self, cert: str = "", key: str = "") -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(trustme.CA(), tmp_path)


@asynccontextmanager
async def serving(
    tls: TLSContexts, listens: list[Listen] | None = None, config: TransportConfig | None = None
) -> AsyncIterator[Transports]:
    transports = Transports(listens or [Listen("tls", "127.0.0.1", 0)], config, tls=tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(transports.serve)
        yield transports
        nursery.cancel_scope.cancel()


class Peer:
    """A SIP peer over a TLS (client or server side) stream, reading whole messages with the framer."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.framer = StreamFramer()
        self.items: list[bytes | Keepalive] = []

    async def read_message(self) -> Request | Response:
        while not self.items:
            data = await self.stream.receive_some(65536)
            assert data, "connection closed while waiting for a message"
            self.items.extend(self.framer.feed(bytes(data)))
        item = self.items.pop(0)
        assert isinstance(item, bytes)
        return parse_message_untrusted(item)

    def serial(self) -> int:
        peer = self.stream.getpeercert()
        assert peer is not None
        return int(str(peer["serialNumber"]), 16)


async def tls_connect(port: int, ctx: ssl.SSLContext, name: str = "127.0.0.1") -> Peer:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=name, https_compatible=True)
    await stream.do_handshake()
    return Peer(stream)


async def test_request_in_response_back_over_tls(pki: Pki) -> None:
    cert, key, serial = pki.issue("proxy", "127.0.0.1")
    with trio.fail_after(TIMEOUT):
        async with serving(TLSContexts(TLSSettings(cert=cert, key=key))) as tp:
            local = tp.local_address("tls")
            assert local.transport == "tls" and local.port != 0
            peer = await tls_connect(local.port, pki.client_context())
            assert peer.serial() == serial
            await peer.stream.send_all(request("INVITE"))
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request) and msg.method == "INVITE"
            flow = flow_of(msg)
            assert flow.transport == "tls" and flow.reliable and source_of(msg).transport == "tls"
            stamp_via(msg, source_of(msg))
            await tp.send_response(make_response(msg, 200), flow)
            got = await peer.read_message()
            assert isinstance(got, Response) and got.status == 200 and got.call_id == "tls-test"
            # A request to the peer's address reuses its connection (the flow a registration stores).
            await tp.send_request(parse_message_untrusted(request(call_id="reuse")), source_of(msg))
            again = await peer.read_message()
            assert isinstance(again, Request) and again.call_id == "reuse"
            assert tp.statistics().tcp_connections_opened == 0


async def test_client_without_certificate_is_refused_when_ca_is_required(pki: Pki) -> None:
    cert, key, _ = pki.issue("proxy", "127.0.0.1")
    ccert, ckey, _ = pki.issue("client", "alice.test")
    tls = TLSContexts(TLSSettings(cert=cert, key=key, ca=pki.ca_path, verify_client=True))
    with trio.fail_after(TIMEOUT):
        async with serving(tls) as tp:
            port = tp.local_address("tls").port
            refused = False
            try:
                # TLS 1.3: the client's handshake ends before the server checks; the refusal shows on read.
                peer = await tls_connect(port, pki.client_context())
                await peer.stream.send_all(request(call_id="nocert"))
                data = await peer.stream.receive_some(65536)
                refused = data == b""
            except (trio.BrokenResourceError, ssl.SSLError):
                refused = True
            assert refused
            with trio.move_on_after(0.3):
                msg = await tp.incoming.receive()
                raise AssertionError(f"a request came through without a client certificate: {msg}")
            assert tp.statistics().tls_handshake_failures == 1
            # Control: the same client with a certificate the CA signed is served.
            peer = await tls_connect(port, pki.client_context(ccert, ckey))
            await peer.stream.send_all(request(call_id="withcert"))
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request) and msg.call_id == "withcert"


async def test_handshake_timeout_closes_a_silent_client(pki: Pki) -> None:
    cert, key, _ = pki.issue("proxy", "127.0.0.1")
    config = TransportConfig(handshake_timeout=0.3)
    with trio.fail_after(TIMEOUT):
        async with serving(TLSContexts(TLSSettings(cert=cert, key=key)), config=config) as tp:
            raw = await trio.open_tcp_stream("127.0.0.1", tp.local_address("tls").port)
            started = trio.current_time()
            assert await raw.receive_some(100) == b""  # closed by the proxy, not by us
            assert 0.25 <= trio.current_time() - started < 3
            stats = tp.statistics()
            assert stats.tls_handshake_timeouts == 1 and stats.tcp_connections_open == 0


async def test_reload_serves_the_new_certificate_to_new_connections(pki: Pki) -> None:
    cert, key, first = pki.issue("proxy", "127.0.0.1")
    tls = TLSContexts(TLSSettings(cert=cert, key=key))
    with trio.fail_after(TIMEOUT):
        async with serving(tls) as tp:
            port = tp.local_address("tls").port
            old = await tls_connect(port, pki.client_context())
            assert old.serial() == first
            _, _, second = pki.issue("proxy", "127.0.0.1")  # the same files, a new certificate
            assert second != first
            assert tp.reload_tls()
            new = await tls_connect(port, pki.client_context())
            assert new.serial() == second
            # A broken file is refused and the current certificate stays.
            await trio.Path(cert).write_text("not a certificate")
            assert not tp.reload_tls()
            assert (await tls_connect(port, pki.client_context())).serial() == second
            # The connection made before the reload still works.
            await old.stream.send_all(request(call_id="old"))
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request) and msg.call_id == "old"


@asynccontextmanager
async def tls_server(pki: Pki, *identities: str, ca: trustme.CA | None = None) -> AsyncIterator[Transports]:
    cert, key, _ = pki.issue("server", *identities, ca=ca)
    async with serving(TLSContexts(TLSSettings(cert=cert, key=key))) as server:
        yield server


async def test_outgoing_tls_verifies_the_server_by_address_and_by_name(pki: Pki) -> None:
    cert, key, _ = pki.issue("proxy", "127.0.0.1")
    client_tls = TLSContexts(TLSSettings(cert=cert, key=key, ca=pki.ca_path))
    with trio.fail_after(TIMEOUT):
        async with serving(client_tls) as proxy:
            # An IP-address next hop: matched against the certificate's IP SAN.
            async with tls_server(pki, "127.0.0.1") as server:
                dest = server.local_address("tls")
                await proxy.send_request(parse_message_untrusted(request(call_id="by-ip")), dest)
                got = await server.incoming.receive()
                assert isinstance(got, Request) and got.call_id == "by-ip"
                assert flow_of(got).transport == "tls"
            # Located by name: the certificate must carry that name.
            async with tls_server(pki, "sip.example.test") as server:
                dest = server.local_address("tls")
                proxy.note_server_name(dest, "sip.example.test")
                await proxy.send_request(parse_message_untrusted(request(call_id="by-name")), dest)
                got = await server.incoming.receive()
                assert isinstance(got, Request) and got.call_id == "by-name"
            async with tls_server(pki, "other.example.test") as server:
                dest = server.local_address("tls")
                proxy.note_server_name(dest, "sip.example.test")
                with pytest.raises(TransportError, match="failed"):
                    await proxy.send_request(parse_message_untrusted(request(call_id="wrong-name")), dest)
            # Signed by a CA we do not trust.
            async with tls_server(pki, "127.0.0.1", ca=trustme.CA()) as server:
                with pytest.raises(TransportError, match="failed"):
                    await proxy.send_request(parse_message_untrusted(request()), server.local_address("tls"))
                with trio.move_on_after(0.3):
                    msg = await server.incoming.receive()
                    raise AssertionError(f"sent to an unverified server: {msg}")
            assert proxy.statistics().tls_handshake_failures == 2


async def test_reply_no_connect_never_opens_a_connection(pki: Pki) -> None:
    cert, key, _ = pki.issue("proxy", "127.0.0.1")
    with trio.fail_after(TIMEOUT):
        async with serving(TLSContexts(TLSSettings(cert=cert, key=key, ca=pki.ca_path))) as tp:
            # The client listens too, at the port its Via names: a response may reach it there.
            async with tls_server(pki, "127.0.0.1") as client_side:
                via_port = client_side.local_address("tls").port
                peer = await tls_connect(tp.local_address("tls").port, pki.client_context())
                await peer.stream.send_all(request(call_id="gone", port=via_port))
                msg = await tp.incoming.receive()
                assert isinstance(msg, Request)
                await peer.stream.aclose()
                for _ in range(300):  # until the proxy has seen the close (bounded)
                    if tp.connection(source_of(msg)) is None:
                        break
                    await trio.sleep(0.01)
                assert tp.connection(source_of(msg)) is None
                with pytest.raises(TransportError, match="reply_no_connect"):
                    await tp.send_response(make_response(msg, 200), flow_of(msg), no_connect=True)
                with trio.move_on_after(0.3):
                    got = await client_side.incoming.receive()
                    raise AssertionError(f"a response opened a connection: {got}")
                # Control: without the flag 18.2.2 opens a connection to the Via's address.
                await tp.send_response(make_response(msg, 200), flow_of(msg))
                got = await client_side.incoming.receive()
                assert isinstance(got, Response) and got.status == 200 and got.call_id == "gone"


def test_tls_configuration_is_checked(pki: Pki) -> None:
    assert parse_listen("tls:127.0.0.1").port == 5061
    with pytest.raises(ConfigError, match=r"tls\.cert"):
        load_config(overrides={"proxy": {"listen": ["tls:127.0.0.1:5061"]}})
    with pytest.raises(ConfigError, match=r"tls\.verify_client"):
        load_config(overrides={"tls": {"verify_client": True}})
    with pytest.raises(ConfigError, match=r"tls\.min_version"):
        load_config(overrides={"tls": {"min_version": "TLSv1.0"}})
    cert, key, _ = pki.issue("proxy", "127.0.0.1")
    config = load_config(overrides={"proxy": {"listen": ["tls:127.0.0.1:0"]}, "tls": {"cert": cert, "key": key}})
    tls = build_tls(config)
    assert tls is not None and tls.server is not None
    assert tls.server.minimum_version == ssl.TLSVersion.TLSv1_2 and tls.client.check_hostname
