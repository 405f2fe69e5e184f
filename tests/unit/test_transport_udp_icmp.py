"""UDP ICMP memory: a peer that comes back on a port that was reported unreachable is answered at once."""

from __future__ import annotations

import trio

from tests.unit.transport_support import TIMEOUT, serving
from trioproxy.sip import Address, Request, make_response, parse_message_untrusted
from trioproxy.transport import Flow, Listen, TransportError, Transports


def options(port: int, call_id: str) -> bytes:
    return (
        "OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id}\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def received(tp: Transports) -> Request:
    """The next message the transports delivered, which must be a request."""
    msg = await tp.incoming.receive()
    assert isinstance(msg, Request), msg
    return msg


async def test_a_datagram_from_an_unreachable_port_clears_its_icmp_report() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            proxy_port = tp.listen_addresses()[0].port
            # The first caller sends from port P, then goes away.
            old = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            await old.bind(("127.0.0.1", 0))
            port = old.getsockname()[1]
            await old.sendto(options(port, "first"), ("127.0.0.1", proxy_port))
            first = await received(tp)
            old.close()
            # The proxy still sends there (a retransmission): the ICMP port-unreachable is recorded.
            data = parse_message_untrusted(options(port, "probe"))
            for _ in range(100):
                try:
                    await tp.send_request(data, Address("udp", "127.0.0.1", port))
                except TransportError:
                    pass
                if tp.statistics().udp_icmp_errors >= 1:
                    break
                await trio.sleep(0.01)
            assert tp.statistics().udp_icmp_errors >= 1
            # Once more, so that a report stays in the table (a refused send consumes it).
            await tp.send_request(data, Address("udp", "127.0.0.1", port))
            for _ in range(100):
                await trio.sleep(0.01)
                endpoint = tp._udp[0]
                if ("127.0.0.1", port) in endpoint._unreachable:
                    break
            assert ("127.0.0.1", port) in tp._udp[0]._unreachable
            # A new caller starts on the same port: its request is answered at once.
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as new:
                await new.bind(("127.0.0.1", port))
                await new.sendto(options(port, "second"), ("127.0.0.1", proxy_port))
                request = await received(tp)
                assert request.call_id == "second"
                assert isinstance(request.flow, Flow)
                await tp.send_response(make_response(request, 200), request.flow)
                with trio.fail_after(1):
                    answer, _ = await new.recvfrom(65535)
            assert answer.startswith(b"SIP/2.0 200 ")
            assert first.call_id == "first"
