"""UDP transport on loopback: receive, RFC 3581 response routing, ICMP errors, overload, malformed input."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.lowlevel
import trio.testing

from tests.unit.transport_support import TIMEOUT, flow_of, needs_ipv6, serving, source_of
from trioproxy.sip import (
    Address,
    Request,
    Response,
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
    Transports,
    stamp_via,
)


def options(via: str, call_id: str = "udp-test", extra: str = "") -> bytes:
    return (
        "OPTIONS sip:bob@example.com SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()


def client_socket(host: str = "127.0.0.1") -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    return sock


def closed_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


async def test_request_in_response_out_via_rport() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            local = tp.local_address("udp")
            assert local.transport == "udp" and local.host == "127.0.0.1" and local.port != 0
            with client_socket() as client:
                await client.bind(("127.0.0.1", 0))
                cport = client.getsockname()[1]
                # The sent-by port (9) is wrong on purpose: rport must carry the response back.
                await client.sendto(
                    options("SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKr1"), ("127.0.0.1", local.port)
                )
                msg = await tp.incoming.receive()
                assert isinstance(msg, Request)
                assert msg.method == "OPTIONS"
                assert msg.source == Address("udp", "127.0.0.1", cport)
                flow = msg.flow
                assert isinstance(flow, Flow)
                assert flow.transport == "udp" and not flow.reliable
                assert flow.local == local and flow.remote == msg.source
                assert stamp_via(msg, source_of(msg))
                assert msg.top_via.rport == cport and msg.top_via.received == "127.0.0.1"
                await tp.send_response(make_response(msg, 200), flow)
                data, addr = await client.recvfrom(65535)
                assert addr[1] == local.port  # sent from the listener the request came in on
                resp = parse_message_untrusted(data)
                assert isinstance(resp, Response) and resp.status == 200
                assert resp.top_via.rport == cport
                stats = tp.statistics()
                assert stats.udp_datagrams_in == 1 and stats.udp_datagrams_out == 1


async def test_response_without_rport_goes_to_received_and_sent_by_port() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            local = tp.local_address("udp")
            with client_socket() as sender, client_socket() as listener:
                await sender.bind(("127.0.0.1", 0))
                await listener.bind(("127.0.0.1", 0))
                lport = listener.getsockname()[1]
                # sent-by names a host that is not the source: received is stamped, port from sent-by.
                via = f"SIP/2.0/UDP ua.invalid:{lport};branch=z9hG4bKr2"
                await sender.sendto(options(via), ("127.0.0.1", local.port))
                msg = await tp.incoming.receive()
                assert isinstance(msg, Request)
                assert stamp_via(msg, source_of(msg))
                assert msg.top_via.received == "127.0.0.1"
                await tp.send_response(make_response(msg, 404), flow_of(msg))
                data, _ = await listener.recvfrom(65535)
                resp = parse_message_untrusted(data)
                assert isinstance(resp, Response) and resp.status == 404


async def test_send_request_leaves_from_listener_address() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            local = tp.local_address("udp")
            with client_socket() as peer:
                await peer.bind(("127.0.0.1", 0))
                dest = Address("udp", "127.0.0.1", peer.getsockname()[1])
                req = parse_message_untrusted(options(f"SIP/2.0/UDP {local.host_port};branch={new_branch()}"))
                await tp.send_request(req, dest)
                data, addr = await peer.recvfrom(65535)
                assert data == req.to_bytes()
                assert addr[:2] == (local.host, local.port)
                # The peer answers to the Via: the response comes back in through the same listener.
                resp = make_response(parse_message_untrusted(data), 180)  # type: ignore[arg-type]
                await peer.sendto(resp.to_bytes(), addr[:2])
                got = await tp.incoming.receive()
                assert isinstance(got, Response) and got.status == 180
                assert got.source == dest


async def test_icmp_port_unreachable_raises_transport_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            dest = Address("udp", "127.0.0.1", closed_port())
            req = parse_message_untrusted(options("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKicmp"))
            # Linux reports the ICMP error on a later operation of the socket: the first send succeeds, a
            # retransmission raises.
            raised = None
            for _ in range(50):
                try:
                    await tp.send_request(req, dest)
                except TransportError as exc:
                    raised = exc
                    break
                await trio.sleep(0.01)
            assert raised is not None
            assert "unreachable" in str(raised) or "refused" in str(raised).lower()
            stats = tp.statistics()
            assert stats.send_errors >= 1
            assert stats.udp_icmp_errors >= 1  # read from the socket's error queue (IP_RECVERR)
            # Other destinations are not blamed for it.
            with client_socket() as peer:
                await peer.bind(("127.0.0.1", 0))
                await tp.send_request(req, Address("udp", "127.0.0.1", peer.getsockname()[1]))
                data, _ = await peer.recvfrom(65535)
                assert data == req.to_bytes()


async def test_overload_drops_and_counts() -> None:
    config = TransportConfig(incoming_capacity=4)
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)], config) as tp:
            port = tp.local_address("udp").port
            with client_socket() as client:
                for i in range(20):
                    via = f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKov{i}"
                    await client.sendto(options(via, call_id=f"ov-{i}"), ("127.0.0.1", port))
                for _ in range(500):
                    await trio.testing.wait_all_tasks_blocked()
                    if tp.statistics().udp_datagrams_in == 20:
                        break
                    await trio.sleep(0.01)
            stats = tp.statistics()
            assert stats.udp_drops == 16
            received = [tp.incoming.receive_nowait() for _ in range(4)]
            assert [m.call_id for m in received] == [f"ov-{i}" for i in range(4)]  # type: ignore[union-attr]
            with pytest.raises(trio.WouldBlock):
                tp.incoming.receive_nowait()


async def test_malformed_request_delivered_junk_dropped_keepalive_ignored() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            port = tp.local_address("udp").port
            with client_socket() as client:
                await client.bind(("127.0.0.1", 0))
                cport = client.getsockname()[1]
                await client.sendto(b"\x00\x01junk that is not SIP", ("127.0.0.1", port))
                await client.sendto(b"\r\n\r\n", ("127.0.0.1", port))
                bad = options(
                    "SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bKbad", extra="this line has no colon\r\n"
                )
                await client.sendto(bad, ("127.0.0.1", port))
                item = await tp.incoming.receive()
                assert isinstance(item, Malformed)
                assert item.data == bad
                assert item.error.status == 400
                assert item.source == Address("udp", "127.0.0.1", cport)
                assert item.flow.remote == item.source
            stats = tp.statistics()
            assert stats.udp_datagrams_in == 3
            assert stats.parse_errors == 2
            assert stats.malformed_delivered == 1
            assert stats.keepalives == 1


async def test_shutdown_closes_sockets_and_channel() -> None:
    with trio.fail_after(TIMEOUT):
        tp = Transports([Listen("udp", "127.0.0.1", 0), Listen("tcp", "127.0.0.1", 0)])
        async with trio.open_nursery() as nursery:
            await nursery.start(tp.serve)
            udp_port = tp.local_address("udp").port
            tcp_port = tp.local_address("tcp").port
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.EndOfChannel):
            await tp.incoming.receive()
        # Both ports are free again.
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", udp_port if kind == socket.SOCK_DGRAM else tcp_port))
        with pytest.raises(TransportError):
            await tp.send_request(
                parse_message_untrusted(options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKs")),
                Address("tcp", "127.0.0.1", tcp_port),
            )


def test_listen_validates() -> None:
    with pytest.raises(ValueError):
        Listen("sctp", "127.0.0.1", 5060)
    with pytest.raises(ValueError):
        Listen("udp", "127.0.0.1", 70000)
    assert Listen("udp", "::1", 0).family == socket.AF_INET6


async def test_no_listener_for_family_is_a_transport_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            with pytest.raises(TransportError):
                tp.local_address("udp", socket.AF_INET6)
            req = parse_message_untrusted(options("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKf"))
            with pytest.raises(TransportError):
                await tp.send_request(req, Address("udp", "::1", 5060))


@needs_ipv6
async def test_ipv6_and_ipv4_listeners_side_by_side() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0), Listen("udp", "::1", 0)]) as tp:
            local6 = tp.local_address("udp", socket.AF_INET6)
            assert local6.host == "::1" and local6.port != 0
            with client_socket("::1") as client:
                await client.bind(("::1", 0))
                cport = client.getsockname()[1]
                await client.sendto(
                    options("SIP/2.0/UDP [::1]:9;rport;branch=z9hG4bK6"), ("::1", local6.port)
                )
                msg = await tp.incoming.receive()
                assert isinstance(msg, Request)
                assert msg.source == Address("udp", "::1", cport)
                assert flow_of(msg).local == local6
                stamp_via(msg, source_of(msg))
                await tp.send_response(make_response(msg, 200), flow_of(msg))
                data, addr = await client.recvfrom(65535)
                assert addr[1] == local6.port
                resp = parse_message_untrusted(data)
                assert isinstance(resp, Response) and resp.status == 200


async def test_bind_conflict_is_reported_and_releases_other_sockets() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as first:
            taken = first.local_address("udp").port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                tcp_port = probe.getsockname()[1]
            tp = Transports([Listen("tcp", "127.0.0.1", tcp_port), Listen("udp", "127.0.0.1", taken)])
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError, match=r"cannot listen on udp:127\.0\.0\.1"):
                    await nursery.start(tp.serve)
            # The TCP listener bound before the failure was closed again.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
                again.bind(("127.0.0.1", tcp_port))
            with pytest.raises(RuntimeError):
                await tp.serve()


async def test_reuse_port_lets_two_workers_share_the_port() -> None:
    config = TransportConfig(reuse_port=True)
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0), Listen("tcp", "127.0.0.1", 0)], config) as one:
            udp, tcp = one.local_address("udp"), one.local_address("tcp")
            listens = [Listen("udp", "127.0.0.1", udp.port), Listen("tcp", "127.0.0.1", tcp.port)]
            async with serving(listens, config) as two:
                assert two.local_address("udp") == udp and two.local_address("tcp") == tcp
