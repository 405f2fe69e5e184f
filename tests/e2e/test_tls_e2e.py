"""TLS against a real ``trioproxy run``: a TLS caller reaches a UDP callee, client certificates, reload.

One proxy for the module listens on UDP, TCP and TLS (``--tls-cert/--tls-key``, and ``--tls-ca`` so that
clients must present a certificate that CA signed). The TLS peer is a Python ``ssl`` client over a real
socket (SIPp as packaged is built without TLS); the callee is a SIPp UAS over UDP.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from trioproxy.sip import Request, Response, StreamFramer, parse_message_untrusted

from .conftest import CORE, HOST, Lab, ProxyRun, free_port

READ_TIMEOUT = 10.0  # seconds for one expected message


def _write_server_cert(ca: trustme.CA, workdir: Path) -> int:
    """Write a new certificate for the proxy into its files; its serial number."""
    cert = ca.issue_cert(HOST)
    (workdir / "proxy.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(workdir / "proxy.key"))
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


@dataclass
class TlsLab:
    lab: Lab
    proxy: ProxyRun
    tls_port: int
    ca: trustme.CA
    workdir: Path
    client_cert: str
    client_key: str

    def issue_server_cert(self) -> int:
        return _write_server_cert(self.ca, self.workdir)

    def context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if with_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsLab]:
    workdir = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    client = ca.issue_cert("alice.example.test")
    (workdir / "client.pem").write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(workdir / "client.key"))
    lab = Lab(workdir)
    tls_port = free_port()
    try:
        _write_server_cert(ca, workdir)
        proxy = lab.proxy(
            **CORE,
            extra_args=[
                "--listen", f"tls:{HOST}:{tls_port}",
                "--tls-cert", str(workdir / "proxy.pem"),
                "--tls-key", str(workdir / "proxy.key"),
                "--tls-ca", str(workdir / "ca.pem"),
            ],
        )  # fmt: skip
        yield TlsLab(lab, proxy, tls_port, ca, workdir, str(workdir / "client.pem"), str(workdir / "client.key"))
    finally:
        lab.close()


class TlsPeer:
    """A SIP user agent on one TLS connection (blocking socket, every read bounded)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection((HOST, port), timeout=READ_TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname=HOST)
        self.port: int = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str) -> None:
        self.sock.sendall(text.replace("\n", "\r\n").encode())

    def read(self) -> Request | Response:
        deadline = time.monotonic() + READ_TIMEOUT
        while not self.pending:
            assert time.monotonic() < deadline, "no message in time"
            data = self.sock.recv(65536)
            assert data, "the proxy closed the connection"
            self.pending += [item for item in self.framer.feed(data) if isinstance(item, bytes)]
        return parse_message_untrusted(self.pending.pop(0))

    def final(self, method: str) -> Response:
        """Read until the final response of ``method`` (provisionals and other messages skipped, bounded)."""
        for _ in range(20):
            msg = self.read()
            if isinstance(msg, Response) and msg.status >= 200 and msg.cseq.method == method:
                return msg
        raise AssertionError(f"no final response to {method}")

    def serial(self) -> int:
        cert = self.sock.getpeercert()
        assert cert is not None
        return int(str(cert["serialNumber"]), 16)


def _head(method: str, uri: str, peer: TlsPeer, call_id: str, cseq: int, extra: str = "") -> str:
    return (
        f"{method} {uri} SIP/2.0\n"
        f"Via: SIP/2.0/TLS {HOST}:{peer.port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\n"
        "From: <sip:alice@example.test>;tag=alice1\n"
        f"Call-ID: {call_id}\n"
        f"CSeq: {cseq} {method}\n"
        "Max-Forwards: 70\n"
        f"Contact: <sip:alice@{HOST}:{peer.port};transport=tls>\n"
        f"{extra}"
        "Content-Length: 0\n\n"
    )


def _record_routes(headers: list[tuple[str, str]]) -> list[str]:
    return [v.strip() for name, value in headers if name == "record-route" for v in value.split(",")]


def test_tls_caller_reaches_udp_callee_with_double_record_route(tls_lab: TlsLab) -> None:
    lab, proxy = tls_lab.lab, tls_lab.proxy
    uas = lab.uas("uas_answer.xml")
    peer = TlsPeer(tls_lab.tls_port, tls_lab.context())
    try:
        ruri = f"sip:bob@{uas.address}"
        call_id = f"tls-{uuid.uuid4().hex[:8]}"
        peer.send(_head("INVITE", ruri, peer, call_id, 1, f"To: <{ruri}>\n"))
        ok = peer.final("INVITE")
        assert ok.status == 200, lab.diagnostics()
        record_route = [v.strip() for v in ok.get_all("Record-Route")]
        assert len(record_route) == 2, record_route
        to = ok.get("To")
        contact = ok.get("Contact")
        assert to is not None and contact is not None
        target = contact.strip().strip("<>")
        routes = "".join(f"Route: {v}\n" for v in reversed(record_route))
        peer.send(_head("ACK", target, peer, call_id, 1, f"To: {to}\n{routes}"))
        peer.send(_head("BYE", target, peer, call_id, 2, f"To: {to}\n{routes}"))
        bye_ok = peer.final("BYE")
        assert bye_ok.status == 200, lab.diagnostics()
    finally:
        peer.close()
    lab.expect_success(uas)
    # The callee saw the proxy twice in Record-Route (RFC 5658): its UDP side on top, then the TLS side.
    invite = uas.received("INVITE")[0]
    seen = _record_routes(invite.headers)
    assert len(seen) == 2, seen
    assert f"{HOST}:{proxy.port}" in seen[0] and "r2=on" in seen[0] and "transport" not in seen[0], seen
    assert f"{HOST}:{tls_lab.tls_port};transport=tls" in seen[1] and "r2=on" in seen[1], seen
    # The caller's BYE went through the Record-Route: over UDP to the callee, who answered it.
    assert len(uas.received("BYE")) == 1
    assert uas.received("BYE")[0].transport == "UDP"


def _options(peer: TlsPeer) -> str:
    uri = f"sip:{HOST}:{peer.port}"
    return _head("OPTIONS", f"sip:nobody@{HOST}:9", peer, uuid.uuid4().hex, 1, f"To: <{uri}>\n").replace(
        "Max-Forwards: 70", "Max-Forwards: 0"
    )


def test_client_without_certificate_is_refused(tls_lab: TlsLab) -> None:
    try:
        peer = TlsPeer(tls_lab.tls_port, tls_lab.context(with_cert=False))
        # TLS 1.3: the client's handshake is done before the server checks; the refusal comes on read.
        peer.send(_options(peer))
        answer = peer.sock.recv(65536)
        peer.close()
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b"", answer
    # Control: with a certificate the CA signed, the same request is answered.
    peer = TlsPeer(tls_lab.tls_port, tls_lab.context())
    try:
        peer.send(_options(peer))
        reply = peer.read()
        assert isinstance(reply, Response) and reply.status == 483
    finally:
        peer.close()


def test_sighup_reloads_the_certificate_for_new_connections(tls_lab: TlsLab) -> None:
    before = TlsPeer(tls_lab.tls_port, tls_lab.context())
    try:
        old_serial = before.serial()
        new_serial = tls_lab.issue_server_cert()
        assert new_serial != old_serial
        os.kill(tls_lab.proxy.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        seen = old_serial
        while seen != new_serial and time.monotonic() < deadline:
            time.sleep(0.1)
            peer = TlsPeer(tls_lab.tls_port, tls_lab.context())
            seen = peer.serial()
            peer.close()
        assert seen == new_serial, tls_lab.proxy.log()
        # The connection opened before the reload keeps working.
        before.send(_options(before))
        reply = before.read()
        assert isinstance(reply, Response) and reply.status == 483
    finally:
        before.close()
