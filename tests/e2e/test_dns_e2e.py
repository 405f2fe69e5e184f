"""End-to-end: RFC 3263 server location in the running proxy, with SIPp peers and a real DNS server.

Each test runs the project's DNS responder (``tests/dns_responder.py``) as a trio task on a free loopback
port, starts SIPp callees on free ports, publishes NAPTR/SRV/A records naming those ports, then starts
``trioproxy run --nameserver 127.0.0.1:PORT`` and sends a SIPp call to ``sip:service@example.test`` through
it. The harness of ``conftest.py`` (``lab``) is synchronous (it waits on processes), so its calls run in a
worker thread while the DNS responder keeps answering in the test's trio loop.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
import trio

from tests.dns_responder import DnsResponder
from tests.e2e.conftest import Lab, ProxyRun, SipMessage, SippRun, free_port

pytestmark = pytest.mark.e2e

DOMAIN = "example.test"
SRV_NAME = f"_sip._udp.{DOMAIN}"
SIPP_SILENT_TIMEOUT = 10  # seconds: SIPp's global timeout for the silent-DNS call (the usual one is 20)

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run one of the harness's blocking calls (each bounded by the harness) in a worker thread."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


@pytest.fixture
async def dns_server(nursery: trio.Nursery) -> DnsResponder:
    """The DNS responder, serving an empty zone on 127.0.0.1 until the test ends."""
    responder = DnsResponder()
    await nursery.start(responder.serve)
    return responder


def publish(dns: DnsResponder, targets: Sequence[tuple[int, int]], *, naptr: bool = True) -> list[str]:
    """Publish SRV records for DOMAIN over UDP: one ``(priority, port)`` per target host (A 127.0.0.1).

    With ``naptr``, a NAPTR record (RFC 3263 4.1) points at the SRV name; without it the domain still
    exists (a TXT record at the apex) so that the NAPTR query gets NoAnswer, not NXDOMAIN, and the locator
    goes on to the SRV query (RFC 3263 4.1; RFC 8020 would end the walk at NXDOMAIN). Returns the hosts.
    """
    if naptr:
        dns.add(DOMAIN, "NAPTR", f'10 10 "s" "SIP+D2U" "" {SRV_NAME}.')
    else:
        dns.add(DOMAIN, "TXT", '"trioproxy e2e"')
    hosts, records = [], []
    for i, (priority, port) in enumerate(targets):
        host = f"sip{i}.{DOMAIN}"
        dns.add(host, "A", "127.0.0.1")
        hosts.append(host)
        records.append(f"{priority} 10 {port} {host}.")
    dns.add(SRV_NAME, "SRV", *records)
    return hosts


async def start_proxy(lab: Lab, dns: DnsResponder, *, timer_t1: float | None = None) -> ProxyRun:
    assert dns.address is not None
    host, port = dns.address
    return await blocking(lab.proxy, timer_t1=timer_t1, extra_args=["--nameserver", f"{host}:{port}"])


async def call(
    lab: Lab, proxy: ProxyRun, scenario: str = "dns_uac_call.xml", *, name: str = "uac", **kwargs: object
) -> SippRun:
    """A SIPp call to sip:service@DOMAIN sent to the proxy (which locates DOMAIN), run to its end."""
    return await blocking(
        lab.uac, scenario, proxy.address, keys={"target_domain": DOMAIN}, name=name, **kwargs
    )


def invite_finals(run: SippRun) -> list[SipMessage]:
    return [m for m in run.received() if not m.is_request and m.method == "INVITE" and (m.status or 0) >= 200]


def statuses(proxy: ProxyRun, method: str) -> list[str]:
    return [line.split()[-2] for line in proxy.transaction_lines(method)]


@pytest.mark.parametrize("naptr", [True, False], ids=["naptr-srv-a", "srv-a"])
async def test_call_reaches_the_srv_target(lab: Lab, dns_server: DnsResponder, naptr: bool) -> None:
    """A call to sip:service@example.test reaches the SIPp callee that SRV names (NAPTR -> SRV -> A, SRV -> A)."""
    uas = await blocking(lab.uas, "uas_answer.xml")
    (host,) = publish(dns_server, [(10, uas.port)], naptr=naptr)
    proxy = await start_proxy(lab, dns_server)
    uac = await call(lab, proxy)
    await blocking(lab.expect_success, uac, uas)

    invites = uas.received("INVITE")
    assert len(invites) == 1, lab.diagnostics()
    # RFC 3261 16.6: the Request-URI is kept; only the destination came from DNS.
    assert invites[0].first_line == f"INVITE sip:service@{DOMAIN} SIP/2.0", lab.diagnostics()
    assert invites[0].header("via").startswith(f"SIP/2.0/UDP {proxy.address};"), lab.diagnostics()
    assert dns_server.count(DOMAIN, "NAPTR") >= 1
    assert dns_server.count(SRV_NAME, "SRV") >= 1
    assert dns_server.count(host, "A") >= 1
    assert [m.status for m in invite_finals(uac)] and {m.status for m in invite_finals(uac)} == {200}
    assert statuses(proxy, "INVITE") == ["status=200"], proxy.log()
    assert statuses(proxy, "BYE") == ["status=200"], proxy.log()


async def test_failover_when_the_first_srv_target_is_down(lab: Lab, dns_server: DnsResponder) -> None:
    """Nothing listens on the priority-10 target's port: the call reaches the priority-20 target."""
    dead_port = free_port()
    uas = await blocking(lab.uas, "uas_answer.xml")
    dead_host, live_host = publish(dns_server, [(10, dead_port), (20, uas.port)])
    # The ICMP port unreachable makes it a transport error at once; a small T1 bounds the fallback (Timer B).
    proxy = await start_proxy(lab, dns_server, timer_t1=0.2)
    uac = await call(lab, proxy)
    await blocking(lab.expect_success, uac, uas)

    assert len(uas.received("INVITE")) == 1, lab.diagnostics()
    assert dns_server.count(dead_host, "A") >= 1 and dns_server.count(live_host, "A") >= 1
    # The dead target was tried first (its failure is logged with its address), then the live one.
    assert f"127.0.0.1:{dead_port}" in proxy.log(), proxy.log()
    assert {m.status for m in invite_finals(uac)} == {200}, lab.diagnostics()
    assert statuses(proxy, "INVITE") == ["status=200"], proxy.log()


async def test_failover_when_the_first_srv_target_answers_503(lab: Lab, dns_server: DnsResponder) -> None:
    """The priority-10 target answers 503: the call reaches the priority-20 one; the caller sees only 200."""
    busy = await blocking(lab.uas, "dns_uas_503.xml", name="busy")
    uas = await blocking(lab.uas, "uas_answer.xml", name="answer")
    publish(dns_server, [(10, busy.port), (20, uas.port)])
    proxy = await start_proxy(lab, dns_server)
    uac = await call(lab, proxy)
    await blocking(lab.expect_success, uac, busy, uas)

    assert len(busy.received("INVITE")) == 1 and len(busy.received("ACK")) == 1, lab.diagnostics()
    assert len(uas.received("INVITE")) == 1, lab.diagnostics()
    # RFC 3263 4.3 / RFC 3261 16.7: the 503 stays in the proxy; one final answer (the 200, maybe resent).
    finals = invite_finals(uac)
    assert finals and {m.status for m in finals} == {200}, lab.diagnostics()
    answer_tags = {m.to_tag for m in uas.messages() if m.direction == "sent" and m.status == 200}
    assert {m.to_tag for m in finals} <= answer_tags, lab.diagnostics()
    assert statuses(proxy, "INVITE") == ["status=200"], proxy.log()


async def test_silent_dns_gives_a_timely_error(lab: Lab, dns_server: DnsResponder) -> None:
    """DNS never answers: the caller gets a final error response (DNS lifetime: 2 s), not a hang."""
    dns_server.silent = True
    proxy = await start_proxy(lab, dns_server)
    # The bound: SIPp gives up (and fails the scenario) after 10 s instead of its usual 20.
    uac = await call(lab, proxy, "dns_uac_failed.xml", extra_args=["-timeout", str(SIPP_SILENT_TIMEOUT)])
    await blocking(lab.expect_success, uac)

    finals = invite_finals(uac)
    assert finals, lab.diagnostics()
    status = finals[0].status
    assert status is not None and status >= 400 and {m.status for m in finals} == {status}, lab.diagnostics()
    assert dns_server.count(DOMAIN, "NAPTR") >= 1  # the proxy did ask, and got no answer
    assert statuses(proxy, "INVITE") == [f"status={status}"], proxy.log()


async def test_second_call_within_the_ttl_asks_no_dns(lab: Lab, dns_server: DnsResponder) -> None:
    """A second call within the records' TTL is located from the cache: no DNS query at all."""
    uas = await blocking(lab.uas, "uas_answer.xml", extra_args=["-m", "2"])
    (host,) = publish(dns_server, [(10, uas.port)])
    proxy = await start_proxy(lab, dns_server)
    first = await call(lab, proxy, name="uac1")
    await blocking(lab.expect_success, first)
    before = Counter(dns_server.counts)
    assert before[(DOMAIN, "NAPTR")] >= 1 and before[(SRV_NAME, "SRV")] >= 1 and before[(host, "A")] >= 1

    second = await call(lab, proxy, name="uac2")
    await blocking(lab.expect_success, second, uas)
    assert dns_server.counts == before, f"queries during the second call: {dns_server.counts - before}"
    assert len(uas.received("INVITE")) == 2, lab.diagnostics()
    assert statuses(proxy, "INVITE") == ["status=200", "status=200"], proxy.log()
