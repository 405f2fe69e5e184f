"""Exception boundaries: a fault injected at each one is contained, counted, answered where it can be, and the
proxy answers the next request (fake transport on virtual time; the listener boundaries on loopback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from tests.unit.proxy_harness import CALLER, invite, reply, running_proxy
from tests.unit.test_mgmt_support import http, starter
from tests.unit.transport_support import TIMEOUT, serving
from trioproxy.faults import INTERNAL_ERRORS
from trioproxy.proxy import Proxy, StaticRouter, Target
from trioproxy.proxy.branch import Branch
from trioproxy.proxy.forward import prepare_branch
from trioproxy.proxy.validate import check_request
from trioproxy.sip import Address, Request, parse_message_untrusted, parse_uri_untrusted
from trioproxy.testing.network import FakeTransport
from trioproxy.transport import Listen, Transports, UDPEndpoint, stamp_via
from trioproxy.transport.tcp import TCPManager

A = Address("udp", "127.0.0.11", 5060)


def forward_to_a() -> StaticRouter:
    return StaticRouter(stages=[[Target(parse_uri_untrusted(f"sip:bob@{A.host}:{A.port}"))]])


class Boom(RuntimeError):
    pass


def fail_once(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that its first call raises ``Boom`` (sync or async alike)."""
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise Boom("injected fault")
        return real(*args, **kwargs)

    return wrapper


def fail_once_async(real: Callable[..., Any]) -> Callable[..., Any]:
    calls = [0]

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise Boom("injected fault")
        return await real(*args, **kwargs)

    return wrapper


@pytest.fixture
def counted() -> Iterator[Callable[[str], int]]:
    """How much a boundary's counter rose since the test started."""
    before = dict(INTERNAL_ERRORS.snapshot())
    yield lambda where: INTERNAL_ERRORS.get(where) - before.get(where, 0)


async def next_request_is_forwarded(net: FakeTransport, call_id: str) -> None:
    """The proxy still routes: a new INVITE reaches A and its 200 comes back upstream."""
    await net.inject(invite(f"sip:bob@{A.host}", call_id=call_id), CALLER)
    fwd = await net.wait_for(lambda s: s.dest == A and isinstance(s.msg, Request) and s.msg.call_id == call_id)
    assert isinstance(fwd.msg, Request)
    await net.inject(reply(fwd.msg, 200), A)
    await net.wait_for(lambda s: s.dest is None and s.msg.call_id == call_id and getattr(s.msg, "status", 0) == 200)


def finals_up(net: FakeTransport, call_id: str) -> set[int]:
    """The final statuses sent upstream for a call (retransmissions of one final count once)."""
    return {r.status for r in net.responses_up() if r.call_id == call_id and r.status >= 200}


async def test_request_task_fault_is_a_500(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    monkeypatch.setattr("trioproxy.proxy.core.check_request", fail_once(check_request))
    async with running_proxy(forward_to_a()) as (_proxy, net):
        await net.inject(invite(call_id="req-fault"), CALLER)
        await net.wait_for(lambda s: s.msg.call_id == "req-fault" and getattr(s.msg, "status", 0) == 500)
        assert counted("request") == 1
        await next_request_is_forwarded(net, "after-req-fault")
        await trio.sleep(40)
        assert finals_up(net, "req-fault") == {500}


async def test_branch_task_fault_ends_the_branch_with_500(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    monkeypatch.setattr("trioproxy.proxy.branch.prepare_branch", fail_once(prepare_branch))
    async with running_proxy(forward_to_a()) as (_proxy, net):
        await net.inject(invite(call_id="branch-fault"), CALLER)
        await net.wait_for(lambda s: s.msg.call_id == "branch-fault" and getattr(s.msg, "status", 0) == 500)
        assert counted("branch") == 1
        assert counted("request") == 0
        await next_request_is_forwarded(net, "after-branch-fault")
        await trio.sleep(40)
        assert finals_up(net, "branch-fault") == {500}


@pytest.mark.parametrize("forked", [False, True], ids=["one-target", "forked"])
async def test_branch_fault_escaping_its_boundary_is_handled_by_the_request(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    counted: Callable[[str], int],
    forked: bool,
) -> None:
    # Even the branch boundary's own handling fails: the fault leaves the branch (run in the request's task
    # for one target; for a fork, the stage nursery raises an ExceptionGroup).
    monkeypatch.setattr("trioproxy.proxy.branch.prepare_branch", fail_once(prepare_branch))

    async def broken(self: Branch, exc: Exception) -> None:
        raise Boom("the boundary's handler failed too") from exc

    monkeypatch.setattr(Branch, "_failed", broken)
    b = Address("udp", "127.0.0.12", 5060)
    targets = [Target(parse_uri_untrusted(f"sip:bob@{A.host}:{A.port}"))]
    if forked:
        targets.append(Target(parse_uri_untrusted(f"sip:bob@{b.host}:{b.port}")))
    async with running_proxy(StaticRouter(stages=[targets])) as (_proxy, net):
        await net.inject(invite(call_id="group-fault"), CALLER)
        await net.wait_for(lambda s: s.msg.call_id == "group-fault" and getattr(s.msg, "status", 0) == 500)
        assert counted("request") == 1
        await next_request_is_forwarded(net, "after-group-fault")


async def test_dispatcher_fault_answers_500_and_goes_on(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    monkeypatch.setattr("trioproxy.proxy.dispatcher.stamp_via", fail_once(stamp_via))
    async with running_proxy(forward_to_a()) as (_proxy, net):
        await net.inject(invite(call_id="dispatch-fault"), CALLER)
        await net.wait_for(lambda s: s.msg.call_id == "dispatch-fault" and getattr(s.msg, "status", 0) == 500)
        assert counted("dispatch") == 1
        await next_request_is_forwarded(net, "after-dispatch-fault")


async def test_timer_fault_keeps_the_timer_task(
    autojump_clock: trio.testing.MockClock, counted: Callable[[str], int]
) -> None:
    async with running_proxy(forward_to_a()) as (proxy, net):
        proxy.table.expire = fail_once(proxy.table.expire)  # type: ignore[method-assign]
        await net.inject(invite(call_id="timer-fault"), CALLER)
        await net.request_to(A)
        # Timer A (T1) fires; its first expiry raises; the retransmissions still go out afterwards.
        await net.wait_for(lambda s: len(net.requests_to(A, "INVITE")) >= 3, within=10)
        assert counted("timer") == 1
        await next_request_is_forwarded(net, "after-timer-fault")


async def test_action_fault_is_contained_to_the_action(
    autojump_clock: trio.testing.MockClock, counted: Callable[[str], int]
) -> None:
    net = FakeTransport()
    net.send_request = fail_once_async(net.send_request)  # type: ignore[method-assign]
    async with running_proxy(forward_to_a(), transport=net) as (_proxy, net):
        await net.inject(invite(call_id="action-fault"), CALLER)
        # The first send raised inside the action; Timer A's retransmission reaches A.
        fwd = await net.request_to(A, within=5)
        assert counted("action") == 1
        await net.inject(reply(fwd, 200), A)
        await net.response_up(200)
        await next_request_is_forwarded(net, "after-action-fault")


async def test_route_fault_is_a_500(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    router = forward_to_a()
    monkeypatch.setattr(router, "on_request", fail_once_async(router.on_request))
    async with running_proxy(router) as (_proxy, net):
        await net.inject(invite(call_id="route-fault"), CALLER)
        await net.wait_for(lambda s: s.msg.call_id == "route-fault" and getattr(s.msg, "status", 0) == 500)
        assert counted("route") == 1
        await next_request_is_forwarded(net, "after-route-fault")


async def test_spawned_task_fault_never_reaches_the_nursery(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    async def broken(self: Proxy, request: Request) -> None:
        raise Boom("stateless handler")

    monkeypatch.setattr(Proxy, "_handle_stateless", broken)
    async with running_proxy(forward_to_a()) as (_proxy, net):
        # An ACK matching no transaction gets a task of its own.
        await net.inject(invite(call_id="ack-fault", method="ACK", to_tag="x"), CALLER)
        await trio.sleep(1)
        assert counted("task") == 1
        await next_request_is_forwarded(net, "after-task-fault")


# -- the listeners (loopback sockets, real time) ---------------------------------------------------------------


async def received(tp: Transports) -> Request:
    """The next message the transports delivered, which must be a request."""
    msg = await tp.incoming.receive()
    assert isinstance(msg, Request), msg
    return msg


def options(call_id: str, port: int) -> bytes:
    return (
        "OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id}\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_udp_datagram_fault_keeps_the_listener(
    monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    monkeypatch.setattr("trioproxy.transport.udp.parse_message_untrusted", fail_once(parse_message_untrusted))
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            port = tp.listen_addresses()[0].port
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as peer:
                await peer.bind(("127.0.0.1", 0))
                me = peer.getsockname()[1]
                await peer.sendto(options("udp-1", me), ("127.0.0.1", port))
                await peer.sendto(options("udp-2", me), ("127.0.0.1", port))
                got = await received(tp)
    assert got.call_id == "udp-2"
    assert counted("udp") == 1


async def test_udp_listener_loop_fault_restarts_the_loop(
    monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    monkeypatch.setattr(UDPEndpoint, "receive_loop", fail_once_async(UDPEndpoint.receive_loop))
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("udp", "127.0.0.1", 0)]) as tp:
            port = tp.listen_addresses()[0].port
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as peer:
                await peer.bind(("127.0.0.1", 0))
                await peer.sendto(options("udp-restart", peer.getsockname()[1]), ("127.0.0.1", port))
                got = await received(tp)
    assert got.call_id == "udp-restart"
    assert counted("udp_listener") == 1


async def test_tcp_message_fault_keeps_the_connection(
    monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    monkeypatch.setattr(TCPManager, "_deliver", fail_once_async(TCPManager._deliver))
    with trio.fail_after(TIMEOUT):
        async with serving([Listen("tcp", "127.0.0.1", 0)]) as tp:
            port = tp.listen_addresses()[0].port
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(options("tcp-1", 5060) + options("tcp-2", 5060))
                got = await received(tp)
                assert got.call_id == "tcp-2"
                await stream.send_all(options("tcp-3", 5060))
                got = await received(tp)
                assert got.call_id == "tcp-3"
    assert counted("tcp_message") == 1


# -- the management API -----------------------------------------------------------------------------------------


async def test_mgmt_request_fault_is_a_500_and_counted_on_metrics(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, counted: Callable[[str], int]
) -> None:
    run = await starter(nursery)()
    monkeypatch.setattr(run.server.endpoints, "dispatch", fail_once_async(run.server.endpoints.dispatch))
    with trio.fail_after(TIMEOUT):
        failed = await http(run.port, "GET", "/health")
        health = await http(run.port, "GET", "/health")
        metrics = await http(run.port, "GET", "/metrics")
    assert failed.status == 500
    assert health.status == 200
    assert counted("mgmt") == 1
    text = metrics.body.decode()
    assert "# TYPE trioproxy_internal_errors_total counter" in text
    assert f'trioproxy_internal_errors_total{{where="mgmt"}} {float(INTERNAL_ERRORS.get("mgmt"))}' in text
