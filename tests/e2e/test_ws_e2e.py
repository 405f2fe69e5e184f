"""WebSocket transports (RFC 7118) against a real ``trioproxy run``, without a browser.

One proxy for the module listens on UDP/TCP, ``ws:`` and ``wss:`` (a trustme certificate) and runs the
embedded default route script (registrar, lookup, Record-Route). The WebSocket peer is a Python client
(wsproto over a real socket, a reader thread that answers pings and queues SIP messages) that behaves like a
browser: its Via and Contact name an unresolvable ``.invalid`` host. The caller is a SIPp UAC over UDP.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.events import (
    Request as WsRequest,
)

from trioproxy.sip import Request, Response, parse_message_untrusted

from .conftest import HOST
from .websocket_lab import WsLab, ws_proxy

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 10.0  # seconds for one expected message
PING_INTERVAL = 0.5  # the proxy's ws_ping_interval in this module
IDLE_TIMEOUT = 4.0  # the proxy's tcp_idle_timeout in this module (WebSocket connections too)


@pytest.fixture(scope="module")
def ws_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsLab]:
    settings = {"proxy": {"ws_ping_interval": PING_INTERVAL, "tcp_idle_timeout": IDLE_TIMEOUT}}
    with ws_proxy(tmp_path_factory.mktemp("ws"), settings=settings) as lab:
        yield lab


class WsPeer:
    """A SIP user agent on one WebSocket connection, like a browser's (``.invalid`` Via and Contact host)."""

    def __init__(
        self,
        port: int,
        *,
        ca: trustme.CA | None = None,
        path: str = "/",
        subprotocols: tuple[str, ...] = ("sip",),
        answer_pings: bool = True,
    ) -> None:
        raw = socket.create_connection((HOST, port), timeout=READ_TIMEOUT)
        if ca is not None:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=HOST)
        else:
            self.sock = raw
        self.transport = "wss" if ca is not None else "ws"
        self.host = f"{uuid.uuid4().hex[:10]}.invalid"
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.pings = 0
        self.closed = threading.Event()
        self.messages: queue.Queue[Request | Response] = queue.Queue()
        self.handshake = b""  # the server's raw upgrade answer
        self.accepted: AcceptConnection | RejectConnection | None = None
        self._lock = threading.Lock()
        self.sock.sendall(
            self.ws.send(WsRequest(host=f"{HOST}:{port}", target=path, subprotocols=list(subprotocols)))
        )
        deadline = time.monotonic() + READ_TIMEOUT
        while self.accepted is None:
            assert time.monotonic() < deadline, "no upgrade answer in time"
            data = self.sock.recv(65536)
            if not data:
                break
            self.handshake += data
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, (AcceptConnection, RejectConnection)):
                    self.accepted = event
        self.sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        if isinstance(self.accepted, AcceptConnection):
            self._reader.start()

    def _read_loop(self) -> None:
        parts: list[str | bytes] = []
        deadline = time.monotonic() + 120.0  # bounded: no test keeps a peer this long
        while not self.closed.is_set() and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self._lock:
                self.ws.receive_data(data)
                events = list(self.ws.events())
            for event in events:
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                    if event.message_finished:
                        raw = b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in parts)
                        parts = []
                        self.messages.put(parse_message_untrusted(raw))
                elif isinstance(event, Ping):
                    self.pings += 1
                    if self.answer_pings:
                        self._send_event(event.response())
                elif isinstance(event, CloseConnection):
                    self.closed.set()
                    return
        self.closed.set()

    def _send_event(self, event: TextMessage | Pong | Ping | CloseConnection) -> None:
        with self._lock:
            data = self.ws.send(event)
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed.set()

    def send(self, text: str) -> None:
        self._send_event(TextMessage(data=text.replace("\n", "\r\n")))

    def read(self, timeout: float = READ_TIMEOUT) -> Request | Response:
        return self.messages.get(timeout=timeout)

    def read_request(self, method: str) -> Request:
        for _ in range(10):
            msg = self.read()
            if isinstance(msg, Request) and msg.method == method:
                return msg
        raise AssertionError(f"no {method} received")

    def final(self, method: str) -> Response:
        for _ in range(10):
            msg = self.read()
            if isinstance(msg, Response) and msg.status >= 200 and msg.cseq.method == method:
                return msg
        raise AssertionError(f"no final response to {method}")

    def close(self) -> None:
        if not self.closed.is_set():
            self._send_event(CloseConnection(code=1000))
        self.closed.set()
        if self._reader.is_alive():
            self._reader.join(timeout=2.0)
        self.sock.close()

    # -- SIP --

    def contact(self, user: str) -> str:
        return f"<sip:{user}@{self.host};transport=ws>"

    def register(self, user: str) -> Response:
        call_id = uuid.uuid4().hex
        self.send(
            f"REGISTER sip:{HOST} SIP/2.0\n"
            f"Via: SIP/2.0/{self.transport.upper()} {self.host};branch=z9hG4bK{uuid.uuid4().hex[:16]}\n"
            "Max-Forwards: 70\n"
            f"To: <sip:{user}@{HOST}>\n"
            f"From: <sip:{user}@{HOST}>;tag={uuid.uuid4().hex[:8]}\n"
            f"Call-ID: {call_id}\n"
            "CSeq: 1 REGISTER\n"
            f'Contact: {self.contact(user)};+sip.instance="<urn:uuid:{uuid.uuid4()}>";reg-id=1;expires=600\n'
            "Supported: path, outbound, gruu\n"
            "Content-Length: 0\n\n"
        )
        return self.final("REGISTER")

    def answer(
        self, request: Request, status: int, reason: str, user: str = "alice", tag: str = "ws1"
    ) -> None:
        """Answer ``request`` like a UAS (Via, Record-Route copied; a To tag; our Contact)."""
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in request.get_all("Via")]
        lines += [f"Record-Route: {v}" for v in request.get_all("Record-Route")]
        to = request.get("To") or ""
        lines += [
            f"From: {request.get('From')}",
            f"To: {to}" if ";tag=" in to else f"To: {to};tag={tag}",
            f"Call-ID: {request.call_id}",
            f"CSeq: {request.get('CSeq')}",
            f"Contact: {self.contact(user)}",
            "Content-Length: 0",
        ]
        self.send("\n".join(lines) + "\n\n")


def _upgrade_head(peer: WsPeer) -> str:
    head, _sep, _rest = peer.handshake.partition(b"\r\n\r\n")
    return head.decode("latin-1")


def test_upgrade_answers_with_the_sip_subprotocol_on_any_path(ws_lab: WsLab) -> None:
    peer = WsPeer(ws_lab.ws_port, path="/some/path?x=1")
    try:
        head = _upgrade_head(peer)
        assert head.startswith("HTTP/1.1 101"), head
        assert "sec-websocket-protocol: sip" in head.lower(), head
        # A SIP request over it is answered over it (the default script answers OPTIONS to the proxy).
        peer.send(
            f"OPTIONS sip:{HOST}:{ws_lab.ws_port};transport=ws SIP/2.0\n"
            f"Via: SIP/2.0/WS {peer.host};branch=z9hG4bK{uuid.uuid4().hex[:16]}\n"
            "Max-Forwards: 70\nTo: <sip:x@127.0.0.1>\nFrom: <sip:y@127.0.0.1>;tag=1\n"
            f"Call-ID: {uuid.uuid4().hex}\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"
        )
        reply = peer.final("OPTIONS")
        assert reply.status == 200, ws_lab.lab.diagnostics()
    finally:
        peer.close()


def test_upgrade_without_the_sip_subprotocol_is_refused(ws_lab: WsLab) -> None:
    peer = WsPeer(ws_lab.ws_port, subprotocols=("chat",))
    try:
        assert isinstance(peer.accepted, RejectConnection), _upgrade_head(peer)
        assert _upgrade_head(peer).startswith("HTTP/1.1 400"), _upgrade_head(peer)
    finally:
        peer.sock.close()


def test_proxy_pings_a_silent_peer_and_answers_its_ping(ws_lab: WsLab) -> None:
    peer = WsPeer(ws_lab.ws_port)
    try:
        deadline = time.monotonic() + 5 * PING_INTERVAL + 2.0
        while peer.pings < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert peer.pings >= 2, "the proxy sent no keepalive pings"
        assert not peer.closed.is_set(), "a peer answering pings was closed"
    finally:
        peer.close()


def test_peer_that_answers_nothing_is_closed_after_the_idle_timeout(ws_lab: WsLab) -> None:
    peer = WsPeer(ws_lab.ws_port, answer_pings=False)
    try:
        start = time.monotonic()
        assert peer.closed.wait(IDLE_TIMEOUT + 3.0), "a silent peer stayed connected"
        elapsed = time.monotonic() - start
        assert elapsed >= IDLE_TIMEOUT - 0.5, elapsed
        assert peer.pings >= 1
    finally:
        peer.close()


@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_invite_from_udp_reaches_the_ws_client_over_its_connection(ws_lab: WsLab, transport: str) -> None:
    lab, proxy = ws_lab.lab, ws_lab.proxy
    secure = transport == "wss"
    port = ws_lab.wss_port if secure else ws_lab.ws_port
    peer = WsPeer(port, ca=ws_lab.ca if secure else None)
    user = f"alice-{transport}"
    try:
        ok = peer.register(user)
        assert ok.status == 200, lab.diagnostics()
        uac = lab.uac(
            "uac_call.xml", proxy.address, extra_args=["-s", user], wait=False, name=f"uac-{transport}"
        )
        invite = peer.read_request("INVITE")
        # It came over the registered connection (we read it there) with our Contact as the Request-URI.
        assert peer.host in str(invite.uri), invite.uri
        top_via = invite.get_all("Via")[0]
        assert top_via.upper().startswith(f"SIP/2.0/{transport.upper()} "), top_via
        # Double Record-Route (UDP in, WS out): the WebSocket side on top, with its transport.
        record_route = [v.strip() for v in invite.get_all("Record-Route")]
        assert len(record_route) == 2, record_route
        assert f"{HOST}:{port};transport={transport}" in record_route[0], record_route
        assert "transport" not in record_route[1] and f"{HOST}:{proxy.port}" in record_route[1], record_route
        peer.answer(invite, 200, "OK", user)
        # The dialog's ACK and BYE reach us over the same connection (our Contact host is unresolvable).
        ack = peer.read_request("ACK")
        assert ack.uri == invite.uri or str(ack.uri).endswith(".invalid;transport=ws"), ack.uri
        bye = peer.read_request("BYE")
        peer.answer(bye, 200, "OK", user)
        lab.expect_success(uac)
    finally:
        peer.close()


def test_call_to_a_ws_client_that_has_gone_fails_at_once(ws_lab: WsLab) -> None:
    lab, proxy = ws_lab.lab, ws_lab.proxy
    peer = WsPeer(ws_lab.ws_port)
    user = "gone"
    try:
        assert peer.register(user).status == 200, lab.diagnostics()
    finally:
        peer.close()
    time.sleep(0.3)  # the proxy reads the close frame and drops the connection
    start = time.monotonic()
    uac = lab.uac(
        "uac_failed.xml", proxy.address, subst={"FINAL": "480"}, extra_args=["-s", user], name="uac-gone"
    )
    elapsed = time.monotonic() - start
    lab.expect_success(uac)
    assert len(uac.received(status=480)) >= 1, lab.diagnostics()
    # At once: no retransmission timer ran out (SIPp's start-up is most of this).
    assert elapsed < 5.0, elapsed
    assert "invalid" not in "".join(line for line in proxy.log().splitlines() if "resolve" in line), (
        proxy.log()
    )
