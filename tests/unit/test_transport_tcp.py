"""TCP transport on loopback: framing, keepalives, connection reuse, response routing, idle timeout."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
import trio.testing

from tests.unit.transport_support import TIMEOUT, flow_of, needs_ipv6, serving, source_of
from trioproxy.sip import (
    Address,
    Keepalive,
    Request,
    Response,
    StreamFramer,
    make_response,
    new_branch,
    parse_message_untrusted,
)
from trioproxy.transport import (
    Flow,
    Listen,
    Malformed,
    TransportConfig,
    TransportError,
    stamp_via,
)


def request(
    method: str = "OPTIONS", via: str = "SIP/2.0/TCP 127.0.0.1:5060", call_id: str = "tcp-test"
) -> bytes:
    body = b"v=0\r\n" if method == "INVITE" else b""
    head = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: {via};branch={new_branch()}\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness, so loopback data in flight lands first."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def settle(predicate: Callable[[], bool]) -> None:
    """Let every task run until blocked, until ``predicate`` holds (bounded)."""
    for _ in range(500):
        await trio.testing.wait_all_tasks_blocked()
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached")


class Peer:
    """The far end of a TCP connection, reading whole messages with the same framer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.framer = StreamFramer()
        self.items: list[bytes | Keepalive] = []

    @property
    def port(self) -> int:
        port: int = self.stream.socket.getsockname()[1]
        return port

    async def read_item(self) -> bytes | Keepalive:
        while not self.items:
            data = await self.stream.receive_some(65536)
            assert data, "connection closed while waiting for a message"
            self.items.extend(self.framer.feed(data))
        return self.items.pop(0)

    async def read_message(self) -> Request | Response:
        item = await self.read_item()
        assert isinstance(item, bytes)
        return parse_message_untrusted(item)


async def connect(port: int, host: str = "127.0.0.1") -> Peer:
    return Peer(await trio.open_tcp_stream(host, port))


async def test_request_in_response_back_on_same_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            local = tp.local_address("tcp")
            assert local.port != 0
            peer = await connect(local.port)
            data = request("INVITE")
            await peer.stream.send_all(data)
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request) and msg.method == "INVITE" and msg.body == b"v=0\r\n"
            assert msg.source == Address("tcp", "127.0.0.1", peer.port)
            flow = msg.flow
            assert isinstance(flow, Flow) and flow.reliable and flow.transport == "tcp"
            assert flow.connection is not None and flow.remote == msg.source
            assert flow.local.port == local.port
            stamp_via(msg, source_of(msg))
            await tp.send_response(make_response(msg, 180), flow)
            await tp.send_response(make_response(msg, 200), flow)
            first, second = await peer.read_message(), await peer.read_message()
            assert isinstance(first, Response) and first.status == 180
            assert isinstance(second, Response) and second.status == 200
            stats = tp.statistics()
            assert stats.tcp_connections_accepted == 1 and stats.tcp_connections_opened == 0
            assert stats.tcp_messages_in == 1 and stats.tcp_messages_out == 2
            await peer.stream.aclose()


async def test_request_reuses_connection_the_peer_opened() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            await peer.stream.send_all(request("REGISTER"))
            reg = await tp.incoming.receive()
            assert isinstance(reg, Request)
            out = parse_message_untrusted(request("OPTIONS", call_id="reuse"))
            await tp.send_request(out, source_of(reg))
            got = await peer.read_message()
            assert isinstance(got, Request) and got.call_id == "reuse"
            # The answer comes back on the same connection and names the same flow.
            await peer.stream.send_all(make_response(got, 200).to_bytes())
            resp = await tp.incoming.receive()
            assert isinstance(resp, Response) and resp.flow == reg.flow
            stats = tp.statistics()
            assert stats.tcp_connections_opened == 0 and stats.tcp_connections_open == 1
            await peer.stream.aclose()


async def test_outgoing_connection_is_opened_once_and_reused() -> None:
    with trio.fail_after(TIMEOUT):
        # A plain listener the test reads by hand.
        lsock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        dest = Address("tcp", "127.0.0.1", lsock.getsockname()[1])
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            # Requests without Content-Length get one on a stream (RFC 3261 18.3).
            udp_style = parse_message_untrusted(
                request("OPTIONS", call_id="one").replace(b"Content-Length: 0\r\n", b"")
            )
            assert not udp_style.has("Content-Length")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tp.send_request, udp_style, dest)
                nursery.start_soon(tp.send_request, parse_message_untrusted(request(call_id="two")), dest)
                accepted, _ = await lsock.accept()
            peer = Peer(trio.SocketStream(accepted))
            ids = {(await peer.read_message()).call_id, (await peer.read_message()).call_id}
            assert ids == {"one", "two"}
            assert tp.statistics().tcp_connections_opened == 1
            assert tp.connection(dest) is not None
            # The peer's response arrives on the connection we opened.
            await peer.stream.send_all(make_response(udp_style, 200).to_bytes())  # type: ignore[arg-type]
            resp = await tp.incoming.receive()
            assert isinstance(resp, Response) and resp.source == dest
            assert flow_of(resp).connection is tp.connection(dest)
            await peer.stream.aclose()
        lsock.close()


async def test_connect_refused_raises_transport_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            with pytest.raises(TransportError):
                await tp.send_request(parse_message_untrusted(request()), Address("tcp", "127.0.0.1", port))
            assert tp.statistics().tcp_connections_open == 0


async def test_connect_timeout_with_virtual_time(patient_clock: trio.testing.MockClock) -> None:
    # Nothing answers SYNs sent to a listener whose backlog is full; the bounded connect gives up.
    config = TransportConfig(connect_timeout=10.0)
    backlog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    backlog.bind(("127.0.0.1", 0))
    backlog.listen(0)
    fillers = []
    try:
        port = backlog.getsockname()[1]
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        with trio.fail_after(100):
            async with serving([Listen("tcp", "127.0.0.1", 0)], config) as tp:
                start = trio.current_time()
                with pytest.raises(TransportError, match="timed out"):
                    await tp.send_request(
                        parse_message_untrusted(request()), Address("tcp", "127.0.0.1", port)
                    )
                assert trio.current_time() - start == pytest.approx(10.0)
    finally:
        for filler in fillers:
            filler.close()
        backlog.close()


async def test_framing_across_partial_writes_and_several_per_read() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            one = request("INVITE", call_id="p1")
            for i in range(0, len(one), 7):
                await peer.stream.send_all(one[i : i + 7])
                await trio.lowlevel.checkpoint()
            await peer.stream.send_all(request(call_id="p2") + request(call_id="p3") + b"\r\n")
            got = [await tp.incoming.receive() for _ in range(3)]
            assert [m.call_id for m in got] == ["p1", "p2", "p3"]  # type: ignore[union-attr]
            assert got[0].body == b"v=0\r\n"  # type: ignore[union-attr]
            await peer.stream.aclose()


async def test_keepalive_ping_gets_pong() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            await peer.stream.send_all(b"\r\n\r\n")
            # RFC 5626 4.4.1: the answer is a single CRLF (read raw: a framer would wait for a second one).
            assert await peer.stream.receive_some(100) == b"\r\n"
            # A message after the ping is still framed normally.
            await peer.stream.send_all(b"\r\n\r\n" + request(call_id="after-ping"))
            assert await peer.stream.receive_some(100) == b"\r\n"
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request) and msg.call_id == "after-ping"
            assert tp.statistics().keepalives == 2
            await peer.stream.aclose()


async def test_framing_error_closes_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            no_length = request().replace(b"Content-Length: 0\r\n", b"")
            await peer.stream.send_all(no_length)
            assert await peer.stream.receive_some(100) == b""
            await settle(lambda: tp.statistics().tcp_connections_closed == 1)
            stats = tp.statistics()
            assert stats.framing_errors == 1 and stats.tcp_connections_open == 0
            await peer.stream.aclose()


async def test_malformed_message_on_stream_is_delivered() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            bad = request().replace(b"Max-Forwards: 70\r\n", b"not a header line\r\n")
            await peer.stream.send_all(bad + request(call_id="next"))
            item = await tp.incoming.receive()
            assert isinstance(item, Malformed) and item.error.status == 400
            assert item.flow.connection is not None and item.source.port == peer.port
            # The connection stays usable: the next message is framed and delivered.
            nxt = await tp.incoming.receive()
            assert isinstance(nxt, Request) and nxt.call_id == "next"
            await peer.stream.aclose()


async def test_idle_timeout_closes_quiet_connections(patient_clock: trio.testing.MockClock) -> None:
    config = TransportConfig(idle_timeout=300.0)
    with trio.fail_after(1000):
        async with serving([Listen("tcp", "127.0.0.1", 0)], config) as tp:
            peer = await connect(tp.local_address("tcp").port)
            await peer.stream.send_all(request(call_id="idle"))
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request)
            start = trio.current_time()
            await trio.sleep(200)
            # Traffic the proxy sends counts as activity too.
            await tp.send_response(make_response(msg, 200), flow_of(msg))
            assert isinstance(await peer.read_message(), Response)
            await trio.sleep(299)
            assert tp.connection(source_of(msg)) is not None
            assert await peer.stream.receive_some(10) == b""  # closed by the proxy
            assert trio.current_time() - start == pytest.approx(500.0)
            assert tp.connection(source_of(msg)) is None
            stats = tp.statistics()
            assert stats.tcp_idle_closed == 1 and stats.tcp_connections_open == 0
            await peer.stream.aclose()


async def test_response_reopens_connection_by_via_when_closed() -> None:
    with trio.fail_after(TIMEOUT):
        lsock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        uport = lsock.getsockname()[1]
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            await peer.stream.send_all(request(via=f"SIP/2.0/TCP 127.0.0.1:{uport}"))
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request)
            await peer.stream.aclose()
            await settle(lambda: tp.connection(source_of(msg)) is None)
            # RFC 3261 18.2.2: the connection is gone, so open one to the Via's sent-by.
            await tp.send_response(make_response(msg, 200), flow_of(msg))
            accepted, _ = await lsock.accept()
            back = Peer(trio.SocketStream(accepted))
            resp = await back.read_message()
            assert isinstance(resp, Response) and resp.status == 200
            assert tp.statistics().tcp_connections_opened == 1
            await back.stream.aclose()
        lsock.close()


async def test_shutdown_closes_open_connections() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            peer = await connect(tp.local_address("tcp").port)
            await peer.stream.send_all(request())
            await tp.incoming.receive()
        # serve was cancelled: the peer sees the connection end.
        assert await peer.stream.receive_some(10) == b""
        await peer.stream.aclose()


@needs_ipv6
async def test_ipv6_tcp_round_trip() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "::1", 0)]) as tp:
            local = tp.local_address("tcp", socket.AF_INET6)
            peer = await connect(local.port, "::1")
            await peer.stream.send_all(request(via="SIP/2.0/TCP [::1]:5060"))
            msg = await tp.incoming.receive()
            assert isinstance(msg, Request) and source_of(msg).host == "::1"
            await tp.send_response(make_response(msg, 200), flow_of(msg))
            resp = await peer.read_message()
            assert isinstance(resp, Response) and resp.status == 200
            await peer.stream.aclose()


async def test_full_channel_pushes_back_on_tcp_instead_of_dropping() -> None:
    config = TransportConfig(incoming_capacity=1)
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)], config) as tp:
            peer = await connect(tp.local_address("tcp").port)
            await peer.stream.send_all(b"".join(request(call_id=f"bp-{i}") for i in range(5)))
            await settle(lambda: tp.statistics().tcp_messages_in >= 2)
            # One message queued, the reader waits with the rest: nothing is lost.
            await trio.testing.wait_all_tasks_blocked()
            assert tp.statistics().tcp_messages_in == 2
            got = [await tp.incoming.receive() for _ in range(5)]
            assert [m.call_id for m in got if isinstance(m, Request)] == [f"bp-{i}" for i in range(5)]
            assert tp.statistics().udp_drops == 0
            await peer.stream.aclose()


async def test_local_address_defaults_to_first_listener_of_transport() -> None:
    with trio.fail_after(TIMEOUT):
        listens = [Listen("tcp", "127.0.0.1", 0, advertise="192.0.2.10"), Listen("udp", "127.0.0.1", 0)]
        async with serving(listens) as tp:
            tcp = tp.local_address("tcp")
            assert tcp.host == "192.0.2.10" and tcp.port != 0
            assert tp.local_address("tcp", socket.AF_INET) == tcp
            assert tp.local_address("udp").transport == "udp"
            assert tp.listen_addresses() == [tp.local_address("udp"), tcp]
