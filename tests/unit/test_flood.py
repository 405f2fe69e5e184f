"""Flood protection and limits without sockets: the pike tracker, pipes, the gate, htable expiry, the
proxy core's transaction limit (virtual time), and the configuration of it all."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.unit.proxy_harness import CALLER, invite, running_proxy
from trioproxy.config import ConfigError, load_config
from trioproxy.flood import FloodGate, PikeConfig, PikeTracker, RateLimiter, Trusted, Verdict
from trioproxy.proxy import StaticRouter, Target
from trioproxy.routing import HtableStore
from trioproxy.sip import Address, parse_uri_untrusted
from trioproxy.transport.inbound import flood_reply

A = Address("udp", "127.0.0.11", 5060)


def tracker(**kw: Any) -> PikeTracker:
    base = PikeConfig(sampling_time_unit=2.0, reqs_density_per_unit=10, block_time=30.0)
    return PikeTracker(dataclasses.replace(base, **kw))


def test_a_source_over_the_density_is_blocked_for_block_time_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = tracker()
    caplog.set_level(logging.INFO, "trioproxy.flood")
    assert all(t.check("192.0.2.1", 100.0 + i * 0.01) for i in range(10))
    assert not t.check("192.0.2.1", 100.2)  # the 11th within the unit
    assert all(not t.check("192.0.2.1", 100.3 + i * 0.01) for i in range(50))
    assert t.check("192.0.2.9", 100.3)  # another source is not concerned
    assert t.is_blocked("192.0.2.1", 129.0)
    assert [w.getMessage() for w in caplog.records if "blocking" in w.getMessage()] == [
        "pike: blocking 192.0.2.1 for 30 s: 11 requests in 0.20 s after 0 in the last window"
    ]
    assert t.entries(110.0)[0]["dropped"] == 50
    assert not t.is_blocked("192.0.2.1", 130.3)  # block_time after the block started, flooding or not
    assert t.check("192.0.2.1", 130.4)
    assert t.stats.blocks == 1


def test_a_steady_rate_under_the_density_never_blocks_and_the_window_slides() -> None:
    t = tracker()
    # 4 per second = 8 per 2 s unit: under 10 for ever.
    assert all(t.check("192.0.2.1", i * 0.25) for i in range(400))
    # 9 at the end of one window, 9 at the start of the next: 18 within 2 s, the sliding estimate sees it.
    t2 = tracker()
    for i in range(9):
        assert t2.check("192.0.2.2", 1.9 + i * 0.001)
    results = [t2.check("192.0.2.2", 2.01 + i * 0.001) for i in range(9)]
    assert results.count(False) >= 1


def test_trusted_networks_are_never_blocked() -> None:
    t = PikeTracker(PikeConfig(reqs_density_per_unit=1), Trusted(["10.0.0.0/8", "2001:db8::/32"]))
    assert all(t.check("10.1.2.3", 1.0) for _ in range(100))
    assert all(t.check("2001:db8::1", 1.0) for _ in range(100))
    t.block("10.1.2.3", 1.0)
    assert not t.is_blocked("10.1.2.3", 1.0)
    assert not t.check("192.0.2.1", 1.0) or not t.check("192.0.2.1", 1.0)


def test_memory_is_bounded_oldest_evicted_and_idle_sources_forgotten() -> None:
    t = tracker(max_sources=100, remove_latency=10.0)
    for i in range(1000):
        t.check(f"198.51.{i // 256}.{i % 256}", 1.0)
    assert len(t) == 100
    assert t.stats.evicted == 900
    for _ in range(10):
        t.check("192.0.2.1", 2.0)
    assert not t.check("192.0.2.1", 2.0)
    assert t.check("192.0.2.1", 40.0)  # blocked until 32, then idle past remove_latency: a fresh start


def test_auth_failures_block_a_source_after_n_in_the_window() -> None:
    t = tracker(auth_failures=3, auth_window=60.0)
    assert not t.auth_failed("192.0.2.7", 1.0)
    assert not t.auth_failed("192.0.2.7", 2.0)
    assert not t.auth_failed("192.0.2.8", 2.0)
    assert t.auth_failed("192.0.2.7", 3.0)
    assert not t.check("192.0.2.7", 4.0)
    assert t.check("192.0.2.8", 4.0)
    t2 = tracker(auth_failures=3, auth_window=10.0)
    for when in (1.0, 12.0, 23.0, 34.0):  # spread out: never 3 in one window
        assert not t2.auth_failed("192.0.2.7", when)
    assert tracker().auth_failed("192.0.2.7", 1.0) is False  # 0: off


def test_the_gate_counts_requests_only_and_drops_or_rejects_blocked_sources() -> None:
    t = tracker(reqs_density_per_unit=3)
    gate = FloodGate(t, enabled=True)
    response = b"SIP/2.0 200 OK\r\n"
    assert all(gate.admit("192.0.2.1", response, 1.0) is Verdict.PASS for _ in range(50))
    assert all(gate.admit("192.0.2.1", b"\r\n\r\n", 1.0) is Verdict.PASS for _ in range(50))
    assert [gate.admit("192.0.2.1", b"OPTIONS sip:x SIP/2.0\r\n", 1.0) for _ in range(4)][-1] is Verdict.DROP
    assert gate.admit("192.0.2.1", response, 1.0) is Verdict.DROP  # all of a blocked source's traffic
    gate.action = "503"
    assert gate.admit("192.0.2.1", b"OPTIONS sip:x SIP/2.0\r\n", 1.0) is Verdict.REJECT
    assert gate.admit("192.0.2.1", b"ACK sip:x SIP/2.0\r\n", 1.0) is Verdict.DROP  # an ACK gets no answer
    assert (t.stats.dropped, t.stats.rejected) == (3, 1)
    # Not enabled: nothing is counted, but a block (from a script or auth failures) is enforced.
    off = FloodGate(tracker(reqs_density_per_unit=1), enabled=False)
    assert all(off.admit("192.0.2.2", b"OPTIONS sip:x SIP/2.0\r\n", 1.0) is Verdict.PASS for _ in range(20))
    off.tracker.block("192.0.2.2", 1.0)
    assert off.admit("192.0.2.2", b"OPTIONS sip:x SIP/2.0\r\n", 2.0) is Verdict.DROP
    assert not off.admit_connection("192.0.2.2", 2.0)


def test_the_503_of_a_blocked_source_carries_retry_after() -> None:
    data = invite(method="OPTIONS")
    reply = flood_reply(data, 300)
    assert reply is not None
    assert reply.startswith(b"SIP/2.0 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 300\r\n" in reply
    assert b"Call-ID: call-1@127.0.0.2\r\n" in reply
    assert flood_reply(b"SIP/2.0 200 OK\r\n\r\n", 5) is None
    assert flood_reply(b"garbage", 5) is None


def test_pipes_admit_their_limit_per_interval() -> None:
    rl = RateLimiter(interval=10.0, max_pipes=2)
    assert rl.check("invite", 0.0) is None
    rl.define("invite", 5, 0.0)
    assert [rl.check("invite", 1.0 + i * 0.1) for i in range(7)] == [True] * 5 + [False] * 2
    assert rl.check("invite", 25.0)  # two windows later the count starts over
    rl.define("register", 1, 0.0)
    rl.define("other", 1, 0.0)
    assert len(rl) == 2 and not rl.has("invite")  # least recently used dropped
    assert rl.refused == 2


def test_htable_autoexpire_without_updateexpire_makes_a_fixed_window_counter() -> None:
    now = [0.0]
    store = HtableStore(clock=lambda: now[0])
    table = store.declare("rl", 10.0, update_expire=False, size=3)
    for i in range(5):
        now[0] = i
        table.inc("src")
    assert table.get("src") == 5
    now[0] = 10.0
    assert table.get("src") is None  # 10 s after its creation, whatever the writes since
    refreshed = store.declare("seen", 10.0)
    for i in range(5):
        now[0] = 20.0 + i * 5
        refreshed.inc("src")
    assert refreshed.get("src") == 5  # each write restarts the expiry
    for key in ("a", "b", "c", "d"):
        table.set(key, 1)
    assert sorted(table.keys()) == ["b", "c", "d"]  # size: the oldest goes


def test_configuration_of_pike_limits_and_htables(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[pike]\nenabled = true\naction = "503"\ntrusted = ["10.0.0.0/8"]\n'
        "[limits]\nmax_transactions_per_source = 5\ntcp_max_connections_per_source = 3\n"
        "[htable.ipban]\nautoexpire = 300\n[htable.rl]\nautoexpire = 10\nupdateexpire = false\n"
    )
    config = load_config(path)
    assert config.pike.enabled and config.pike.action == "503"
    assert config.limits.max_transactions_per_source == 5
    assert [(n, t.autoexpire, t.updateexpire) for n, t in config.htable] == [
        ("ipban", 300.0, True),
        ("rl", 10.0, False),
    ]
    for bad in (
        '[pike]\naction = "reject"\n',
        '[pike]\ntrusted = ["nope"]\n',
        "[limits]\nmax_headers = 0\n",
        "[htable.x]\nautoexpire = -1\n",
        "[htable]\nx = 1\n",
        "[limits]\nudp_max_message_size = 70000\n",
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(path)


async def test_new_requests_over_the_per_source_limit_get_503_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Nobody answers downstream: each INVITE stays in progress, holding its place.
    router = StaticRouter(stages=[[Target(parse_uri_untrusted("sip:bob@127.0.0.11"))]])
    async with running_proxy(router) as (proxy, net):
        proxy.max_transactions_per_source = 2
        proxy.retry_after = 7
        for n in range(2):
            await net.inject(invite(call_id=f"c{n}"), CALLER)
        await net.request_to(A)
        start = len(net.sent)
        await net.inject(invite(call_id="c2"), CALLER)
        busy = await net.wait_for(lambda s: getattr(s.msg, "status", None) == 503, start=start, within=5)
        assert busy.msg.get("Retry-After") == "7"
        assert busy.msg.call_id == "c2"
        # In-dialog requests go on (a BYE of a call in progress).
        start = len(net.sent)
        await net.inject(invite(call_id="c3", method="BYE", to_tag="t1"), CALLER)
        await net.wait_for(lambda s: getattr(s.msg, "method", None) == "BYE", start=start, within=5)
        assert proxy.limited == 1


PIKE_SCRIPT = """
function ksr_request_route()
  if KSR.pike.pike_check_req() < 0 then
    KSR.sl.sl_send_reply(503, "Flooding")
    return
  end
  if KSR.pipelimit.pl_check_limit("m:" .. KSR.pv.get("$rm"), "TAILDROP", 2) < 0 then
    KSR.sl.sl_send_reply(503, "Rate Limited")
    return
  end
  KSR.sl.sl_send_reply(200, "OK")
end
"""


async def test_ksr_pike_and_pipelimit_answer_what_the_script_says(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from trioproxy.routing.ksr_pike import FloodService, use_flood_service
    from trioproxy.testing import RouteTest

    path = tmp_path / "pike.lua"
    path.write_text(PIKE_SCRIPT)
    service = FloodService(tracker(reqs_density_per_unit=4), RateLimiter(interval=10.0))
    with use_flood_service(service):
        async with RouteTest(path) as rt:
            statuses = [
                (await (await rt.call("sip:bob@example.com", method="MESSAGE")).final()).status
                for _ in range(3)
            ]
            assert statuses == [200, 200, 503]  # the pipe of MESSAGE admits 2 per interval
            assert (await (await rt.call("sip:bob@example.com", method="OPTIONS")).final()).status == 200
            flooding = await (await rt.call("sip:bob@example.com", method="OPTIONS")).final()
            assert (flooding.status, flooding.reason) == (503, "Flooding")  # the 5th request within 2 s
            assert service.tracker.is_blocked(CALLER.host, trio.current_time())
            await trio.sleep(31)
            assert (await (await rt.call("sip:bob@example.com", method="OPTIONS")).final()).status == 200


async def test_script_check_reads_the_gate_verdict_without_counting_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With ``[pike] enabled`` the gate counts each request; pike_check_req must not count it a second time."""
    from trioproxy.routing.ksr_pike import FloodService, use_flood_service
    from trioproxy.testing import RouteTest

    path = tmp_path / "pike.lua"
    path.write_text(PIKE_SCRIPT.split("  if KSR.pipelimit")[0] + '  KSR.sl.sl_send_reply(200, "OK")\nend\n')
    service = FloodService(tracker(reqs_density_per_unit=4), RateLimiter(interval=10.0), gate_counts=True)
    with use_flood_service(service):
        async with RouteTest(path) as rt:
            # Eight script checks within the window: a counting check would have blocked at the 5th.
            for _ in range(8):
                final = await (await rt.call("sip:bob@example.com", method="OPTIONS")).final()
                assert final.status == 200
            assert not service.tracker.is_blocked(CALLER.host, trio.current_time())
            service.tracker.block(CALLER.host, trio.current_time(), reason="test")
            flooding = await (await rt.call("sip:bob@example.com", method="OPTIONS")).final()
            assert (flooding.status, flooding.reason) == (503, "Flooding")


async def test_the_transports_gate_answers_503_on_udp_and_tcp_before_anything_reaches_incoming() -> None:
    from trioproxy.transport import Listen, Transports

    gate = FloodGate(tracker(reqs_density_per_unit=3, block_time=60.0), enabled=True, action="503")
    transports = Transports([Listen("udp", "127.0.0.1", 0), Listen("tcp", "127.0.0.1", 0)], gate=gate)
    async with trio.open_nursery() as nursery:
        await nursery.start(transports.serve)
        udp_port = transports.local_address("udp").port
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        for n in range(6):
            await sock.sendto(invite(method="OPTIONS", call_id=f"u{n}"), ("127.0.0.1", udp_port))
        delivered: list[Any] = []
        with trio.move_on_after(2):
            while len(delivered) < 3:
                delivered.append(await transports.incoming.receive())
        assert [m.call_id for m in delivered] == ["u0", "u1", "u2"]
        answers: list[bytes] = []
        with trio.move_on_after(2):
            while len(answers) < 3:
                answers.append(await sock.recv(65535))
        assert len(answers) == 3
        assert all(a.startswith(b"SIP/2.0 503 ") and b"\r\nRetry-After: 60\r\n" in a for a in answers)
        # The same source over TCP: refused per message, before parsing, on the same connection.
        stream = await trio.open_tcp_stream("127.0.0.1", transports.local_address("tcp").port)
        await stream.send_all(invite(method="OPTIONS", call_id="t0").replace(b"UDP", b"TCP"))
        with trio.fail_after(2):
            data = await stream.receive_some(65535)
        assert data.startswith(b"SIP/2.0 503 ") and b"Call-ID: t0\r\n" in data
        with pytest.raises(trio.WouldBlock):
            transports.incoming.receive_nowait()
        stats = transports.statistics()
        assert stats.flood_rejected == 4
        await stream.aclose()
        sock.close()
        nursery.cancel_scope.cancel()
