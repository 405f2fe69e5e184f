"""WebSocket transport (RFC 7118) on loopback: upgrade, one SIP message per WebSocket message (text, binary,
fragmented), size limit, responses over the connection, and no connection ever opened by the proxy."""

from __future__ import annotations

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    RejectConnection,
    TextMessage,
)
from wsproto.events import (
    Request as WsRequest,
)

from tests.unit.transport_support import TIMEOUT, flow_of, serving, source_of
from trioproxy.sip import Address, Request, make_response, new_branch, parse_message_untrusted
from trioproxy.transport import Listen, TransportConfig, TransportError


def options(call_id: str = "ws-test") -> str:
    return (
        "OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch={new_branch()}\r\n"
        "Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )


class Client:
    """A WebSocket client over a trio socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []
        self.eof = False

    @classmethod
    async def connect(cls, port: int, subprotocols: tuple[str, ...] = ("sip",)) -> tuple[Client, Event]:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.send(WsRequest(host="127.0.0.1", target="/any", subprotocols=list(subprotocols)))
        answer = await client.next_event()
        return client, answer

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while not self.events:
            data = await self.stream.receive_some(65536)
            if not data:
                self.eof = True
                self.ws.receive_data(None)
            else:
                self.ws.receive_data(data)
            self.events += list(self.ws.events())
            if self.eof and not self.events:
                raise EOFError
        return self.events.pop(0)

    async def next_message(self) -> bytes:
        parts = []
        while True:
            event = await self.next_event()
            if isinstance(event, (TextMessage, BytesMessage)):
                data = event.data
                parts.append(data.encode() if isinstance(data, str) else bytes(data))
                if isinstance(event, Message) and event.message_finished:
                    return b"".join(parts)


async def test_upgrade_then_text_binary_and_fragmented_messages() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("ws", "127.0.0.1", 0)]) as transports:
            port = transports.local_address("ws").port
            client, answer = await Client.connect(port)
            assert isinstance(answer, AcceptConnection) and answer.subprotocol == "sip"
            await client.send(TextMessage(data=options("text")))
            await client.send(BytesMessage(data=options("binary").encode()))
            whole = options("fragments")
            await client.send(TextMessage(data=whole[:40], message_finished=False))
            await client.send(TextMessage(data=whole[40:], message_finished=True))
            got = [await transports.incoming.receive() for _ in range(3)]
            assert [m.call_id if isinstance(m, Request) else m for m in got] == [
                "text",
                "binary",
                "fragments",
            ]
            msg = got[0]
            assert isinstance(msg, Request)
            assert source_of(msg).transport == "ws" and flow_of(msg).reliable
            # The response goes back over the connection although its Via names an unresolvable host.
            await transports.send_response(make_response(msg, 200, "OK"), flow_of(msg))
            reply = parse_message_untrusted(await client.next_message())
            assert reply.call_id == "text" and reply.get("Content-Length") == "0"
            # A request to the client: over the same connection, found by its address.
            await transports.send_request(
                parse_message_untrusted(options("to-client").encode()), source_of(msg)
            )
            assert parse_message_untrusted(await client.next_message()).call_id == "to-client"
            await client.stream.aclose()


async def test_without_sip_subprotocol_the_upgrade_is_refused() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("ws", "127.0.0.1", 0)]) as transports:
            _client, answer = await Client.connect(transports.local_address("ws").port, ("chat",))
            assert isinstance(answer, RejectConnection) and answer.status_code == 400


async def test_message_over_the_size_limit_closes_the_connection() -> None:
    with trio.fail_after(TIMEOUT):
        config = TransportConfig(max_message_size=1000)
        async with serving([Listen("ws", "127.0.0.1", 0)], config) as transports:
            client, _answer = await Client.connect(transports.local_address("ws").port)
            await client.send(TextMessage(data="x" * 2000))
            event = await client.next_event()
            assert isinstance(event, CloseConnection) and event.code == 1009
            # The next client is served as usual.
            other, _ = await Client.connect(transports.local_address("ws").port)
            await other.send(TextMessage(data=options("after")))
            after = await transports.incoming.receive()
            assert isinstance(after, Request) and after.call_id == "after"


async def test_the_proxy_never_opens_or_resolves_a_websocket_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("ws", "127.0.0.1", 0)]) as transports:
            msg = parse_message_untrusted(options("nobody").encode())
            for dest in (Address("ws", "127.0.0.1", 9), Address("wss", "df7jal23ls0d.invalid", 443)):
                try:
                    await transports.send_request(msg, dest)
                except TransportError as exc:
                    assert "no open websocket connection" in str(exc)
                else:
                    raise AssertionError(f"sent to {dest}")
            assert transports.statistics().tcp_connections_opened == 0
