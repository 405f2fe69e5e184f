"""RFC 3263 server location against a real DNS server on 127.0.0.1 (tests/dns_responder.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

import pytest
import trio

from tests.dns_responder import DnsResponder
from trioproxy.locate import Blocklist, LocateError, Locator, ResolverConfig, build_resolver
from trioproxy.sip import Address, parse_uri_untrusted

ZONE = {
    # NAPTR: TCP preferred over UDP at the same order; a SIPS record; a WebSocket one; an SCTP one (ignored)
    "example.test": {
        "NAPTR": [
            '10 20 "s" "SIP+D2U" "" _sip._udp.example.test.',
            '10 10 "s" "SIP+D2T" "" _sip._tcp.example.test.',
            '10 5 "s" "SIPS+D2T" "" _sips._tcp.example.test.',
            '10 1 "s" "SIP+D2W" "" _sip._ws.example.test.',
            '5 1 "s" "SIP+D2S" "" _sip._sctp.example.test.',
        ],
        "A": ["192.0.2.100"],
    },
    "_sip._udp.example.test": {"SRV": ["10 0 5060 udp1.example.test.", "20 0 5070 udp2.example.test."]},
    "_sip._tcp.example.test": {"SRV": ["10 0 5060 tcp1.example.test."]},
    "_sips._tcp.example.test": {"SRV": ["10 0 5061 tls1.example.test."]},
    "_sip._ws.example.test": {"SRV": ["10 0 8080 ws1.example.test."]},
    "udp1.example.test": {"A": ["ttl=60 192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "udp2.example.test": {"A": ["192.0.2.2"]},
    "tcp1.example.test": {"A": ["192.0.2.3"]},
    "tls1.example.test": {"A": ["192.0.2.4"]},
    "ws1.example.test": {"A": ["192.0.2.5"]},
    # no NAPTR: SRV for UDP and TCP directly
    "srvonly.test": {
        "A": ["192.0.2.200"],
        "AAAA": ["2001:db8::200"],
    },
    "_sip._udp.srvonly.test": {"SRV": ["10 0 5080 udp1.example.test."]},
    "_sip._tcp.srvonly.test": {"SRV": ["10 0 5090 tcp1.example.test."]},
    "_sips._tcp.srvonly.test": {"SRV": ["10 0 5091 tls1.example.test."]},
    # neither NAPTR nor SRV: A/AAAA with the default port
    "plain.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    # several addresses in one RRset: servers may rotate them, so tests compare these as sets
    "multi.test": {"A": ["192.0.2.20", "192.0.2.21", "192.0.2.22"]},
    # an SRV of "." : the service is decidedly not available
    "_sip._udp.closed.test": {"SRV": ["0 0 0 ."]},
    "_sip._tcp.closed.test": {"SRV": ["0 0 0 ."]},
    "closed.test": {"A": ["192.0.2.99"]},
    # SRV targets of which one does not exist
    "_sip._udp.holes.test": {"SRV": ["10 0 5060 missing.holes.test.", "20 0 5060 udp2.example.test."]},
    # two SRV names behind NAPTR, the second one silent (for partial results)
    "partial.test": {
        "NAPTR": [
            '10 10 "s" "SIP+D2U" "" _sip._udp.partial.test.',
            '10 20 "s" "SIP+D2T" "" _sip._tcp.partial.test.',
        ]
    },
    "_sip._udp.partial.test": {"SRV": ["10 0 5060 udp2.example.test."]},
    "_sip._tcp.partial.test": {"SRV": ["10 0 5060 tcp1.example.test."]},
    # an alias
    "alias.test": {"CNAME": ["udp2.example.test."]},
    # a host with more addresses than fit a UDP answer: dnspython retries over TCP
    "big.test": {"A": [f"198.51.100.{i}" for i in range(1, 121)]},
}


class FakeClock:
    """An injectable clock for the locator's cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def dns_server(nursery: trio.Nursery) -> DnsResponder:
    responder = DnsResponder(ZONE)
    await nursery.start(responder.serve)
    return responder


def make_locator(
    server: DnsResponder,
    *,
    clock: FakeClock | None = None,
    transports: Iterable[str] = ("udp", "tcp"),
    blocklist: Blocklist | None = None,
    **options: object,
) -> Locator:
    assert server.address is not None
    config = ResolverConfig(
        nameservers=[server.address],
        transports=frozenset(transports),
        **options,  # type: ignore[arg-type]
    )
    return Locator(config, now=clock or FakeClock(), rng=random.Random(1), blocklist=blocklist)


async def locate(locator: Locator, uri: str) -> list[Address]:
    with trio.fail_after(5):
        return await locator.locate(parse_uri_untrusted(uri))


def udp(host: str, port: int = 5060) -> Address:
    return Address("udp", host, port)


def tcp(host: str, port: int = 5060) -> Address:
    return Address("tcp", host, port)


# -- the four RFC 3263 paths ---------------------------------------------------------------------------------


async def test_numeric_host_needs_no_dns(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, transports=("udp", "tcp", "tls"))
    assert await locate(locator, "sip:bob@192.0.2.50") == [udp("192.0.2.50")]
    assert await locate(locator, "sip:bob@192.0.2.50:5070;transport=tcp") == [tcp("192.0.2.50", 5070)]
    assert await locate(locator, "sips:bob@[2001:db8::5]") == [Address("tls", "2001:db8::5", 5061)]
    # RFC 3263 4: maddr replaces the host
    assert await locate(locator, "sip:bob@example.test;maddr=192.0.2.77") == [udp("192.0.2.77")]
    assert await locate(locator, "sip:bob@example.test:5070;maddr=[2001:db8::77]") == [
        udp("2001:db8::77", 5070)
    ]
    assert dns_server.total == 0


async def test_explicit_port_asks_only_a_and_aaaa(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:bob@plain.test:5999") == [
        udp("192.0.2.10", 5999),
        udp("2001:db8::10", 5999),
    ]
    assert await locate(locator, "sip:bob@example.test:5062;transport=tcp") == [tcp("192.0.2.100", 5062)]
    assert dns_server.count("plain.test", "NAPTR") == 0
    assert dns_server.count("example.test", "NAPTR") == 0
    assert dns_server.count("_sip._udp.plain.test") == 0
    assert dns_server.count("_sip._tcp.example.test") == 0


async def test_transport_param_asks_srv_of_that_transport(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:bob@example.test;transport=tcp") == [tcp("192.0.2.3")]
    assert dns_server.count("example.test", "NAPTR") == 0
    assert dns_server.count("_sip._udp.example.test") == 0


async def test_transport_param_without_srv_falls_back_to_a_with_default_port(
    dns_server: DnsResponder,
) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:plain.test;transport=tcp") == [
        tcp("192.0.2.10"),
        tcp("2001:db8::10"),
    ]
    assert dns_server.count("_sip._tcp.plain.test", "SRV") == 1


async def test_naptr_order_then_srv_priority(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    # NAPTR order 10: TCP (pref 10) before UDP (pref 20); SIPS and WS records are skipped (not enabled),
    # SCTP is never used; within the UDP SRV, priority 10 before 20; A before AAAA
    assert await locate(locator, "sip:alice@example.test") == [
        tcp("192.0.2.3"),
        udp("192.0.2.1"),
        udp("2001:db8::1"),
        udp("192.0.2.2", 5070),
    ]
    assert dns_server.count("_sips._tcp.example.test") == 0
    assert dns_server.count("_sip._ws.example.test") == 0


async def test_naptr_sips_records_used_for_sip_when_tls_enabled(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, transports=("udp", "tcp", "tls"))
    targets = await locate(locator, "sip:alice@example.test")
    assert targets[0] == Address("tls", "192.0.2.4", 5061)
    assert targets[1:] == [tcp("192.0.2.3"), udp("192.0.2.1"), udp("2001:db8::1"), udp("192.0.2.2", 5070)]


async def test_sips_uri_only_over_tls(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, transports=("udp", "tcp", "tls"))
    assert await locate(locator, "sips:alice@example.test") == [Address("tls", "192.0.2.4", 5061)]
    assert await locate(locator, "sips:alice@example.test;transport=tcp") == [
        Address("tls", "192.0.2.4", 5061)
    ]
    assert await locate(locator, "sips:alice@example.test;transport=udp") == []
    assert await locate(locator, "sips:plain.test") == [
        Address("tls", "192.0.2.10", 5061),
        Address("tls", "2001:db8::10", 5061),
    ]
    # without TLS enabled a sips: URI has nowhere to go
    assert await locate(make_locator(dns_server), "sips:alice@example.test") == []


async def test_websocket_naptr_used_when_ws_enabled(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, transports=("udp", "ws"))
    assert await locate(locator, "sip:alice@example.test") == [
        Address("ws", "192.0.2.5", 8080),
        udp("192.0.2.1"),
        udp("2001:db8::1"),
        udp("192.0.2.2", 5070),
    ]


async def test_no_naptr_srv_per_transport_in_preference_order(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, transports=("tcp", "udp", "tls"))
    assert await locate(locator, "sip:bob@srvonly.test") == [
        udp("192.0.2.1", 5080),
        udp("2001:db8::1", 5080),
        tcp("192.0.2.3", 5090),
        Address("tls", "192.0.2.4", 5091),
    ]
    assert dns_server.count("srvonly.test", "NAPTR") == 1
    assert dns_server.count("srvonly.test", "A") == 0


async def test_no_naptr_no_srv_uses_a_aaaa_udp_5060(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:bob@plain.test") == [
        udp("192.0.2.10"),
        udp("2001:db8::10"),
    ]
    for name in ("_sip._udp.plain.test", "_sip._tcp.plain.test"):
        assert dns_server.count(name, "SRV") == 1
    # with UDP disabled the default for sip: is TCP
    assert await locate(make_locator(dns_server, transports=("tcp",)), "sip:plain.test") == [
        tcp("192.0.2.10"),
        tcp("2001:db8::10"),
    ]


async def test_srv_dot_target_means_not_available(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:closed.test") == []
    assert dns_server.count("closed.test", "A") == 0


async def test_srv_target_without_address_is_skipped(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:holes.test;transport=udp") == [udp("192.0.2.2")]


async def test_cname_is_followed(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:alias.test:5060") == [udp("192.0.2.2")]


async def test_nonexistent_domain_is_empty_not_an_error(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:bob@nowhere.test") == []
    # RFC 8020: an NXDOMAIN for the domain ends the walk: no SRV and no A/AAAA queries
    assert dns_server.total == 1
    assert dns_server.count("nowhere.test", "NAPTR") == 1
    # a name that exists but has no NAPTR goes on to SRV
    assert await locate(locator, "sip:bob@tcp1.example.test") == [udp("192.0.2.3")]
    assert dns_server.count("_sip._udp.tcp1.example.test", "SRV") == 1


async def test_answers_too_big_for_udp_come_over_tcp(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, use_ipv6=False)
    targets = await locate(locator, "sip:big.test:5060")
    assert len(targets) == 120
    assert {t.host for t in targets} == {f"198.51.100.{i}" for i in range(1, 121)}
    assert dns_server.tcp_queries >= 1


async def test_unsupported_uri() -> None:
    locator = Locator(ResolverConfig(nameservers=[("127.0.0.1", 9)]))
    with pytest.raises(LocateError) as info:
        await locator.locate(parse_uri_untrusted("tel:+15551234"))
    assert info.value.kind == "unsupported" and info.value.status == 416


# -- IPv6 settings -------------------------------------------------------------------------------------------


async def test_all_addresses_of_a_host(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    targets = await locate(locator, "sip:multi.test;transport=tcp")
    assert len(targets) == 3
    assert set(targets) == {tcp("192.0.2.20"), tcp("192.0.2.21"), tcp("192.0.2.22")}


async def test_prefer_ipv6_puts_aaaa_first(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, prefer_ipv6=True)
    assert await locate(locator, "sip:plain.test:5060") == [
        udp("2001:db8::10"),
        udp("192.0.2.10"),
    ]


async def test_ipv6_disabled_asks_no_aaaa(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, use_ipv6=False)
    assert await locate(locator, "sip:plain.test:5060") == [udp("192.0.2.10")]
    assert await locate(locator, "sip:[2001:db8::7]") == []
    assert dns_server.count("plain.test", "AAAA") == 0


# -- the cache -----------------------------------------------------------------------------------------------


async def test_second_locate_within_ttl_asks_nothing_then_ttl_expires(dns_server: DnsResponder) -> None:
    clock = FakeClock()
    locator = make_locator(dns_server, clock=clock)
    first = await locate(locator, "sip:alice@example.test")
    asked = dns_server.total
    assert await locate(locator, "sip:alice@example.test") == first
    assert dns_server.total == asked
    stats = locator.statistics()
    assert stats["queries"] == asked and stats["cache_hits"] >= 6
    # udp1's A record has a TTL of 60 s, so have the cached NoAnswers for AAAA (SOA minimum 60 s)
    clock.now += 61
    assert await locate(locator, "sip:alice@example.test") == first
    assert dns_server.count("udp1.example.test", "A") == 2
    assert dns_server.count("tcp1.example.test", "AAAA") == 2
    assert dns_server.count("udp2.example.test", "AAAA") == 2
    assert dns_server.total == asked + 3
    assert dns_server.count("udp1.example.test", "AAAA") == 1
    assert dns_server.count("example.test", "NAPTR") == 1
    assert dns_server.count("_sip._udp.example.test", "SRV") == 1
    clock.now += 240
    await locate(locator, "sip:alice@example.test")
    assert dns_server.count("example.test", "NAPTR") == 2


async def test_negative_answers_cached_for_soa_minimum(dns_server: DnsResponder) -> None:
    # the responder's SOA: TTL 3600, MINIMUM 60 -> negative answers live 60 s (RFC 2308 5)
    clock = FakeClock()
    locator = make_locator(dns_server, clock=clock)
    assert await locate(locator, "sip:nowhere.test") == []
    assert await locate(locator, "sip:nowhere.test") == []
    assert dns_server.count("nowhere.test", "NAPTR") == 1
    assert locator.statistics()["negative_hits"] >= 1
    clock.now += 59
    await locate(locator, "sip:nowhere.test")
    assert dns_server.count("nowhere.test", "NAPTR") == 1
    clock.now += 2
    await locate(locator, "sip:nowhere.test")
    assert dns_server.count("nowhere.test", "NAPTR") == 2


async def test_negative_ttl_from_config_without_soa(nursery: trio.Nursery) -> None:
    server = DnsResponder(ZONE, soa=None)
    await nursery.start(server.serve)
    clock = FakeClock()
    locator = make_locator(server, clock=clock, negative_ttl=5.0)
    assert await locate(locator, "sip:plain.test") == [udp("192.0.2.10"), udp("2001:db8::10")]
    await locate(locator, "sip:plain.test")
    assert server.count("plain.test", "NAPTR") == 1  # NoAnswer cached
    clock.now += 5
    await locate(locator, "sip:plain.test")
    assert server.count("plain.test", "NAPTR") == 2


async def test_cache_is_size_bounded(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server, cache_size=3, use_ipv6=False)
    for host in ("plain.test", "udp2.example.test", "tcp1.example.test", "tls1.example.test"):
        await locate(locator, f"sip:{host}:5060")
    stats = locator.statistics()
    assert stats["cache_entries"] == 3 and stats["cache_evictions"] == 1
    await locate(locator, "sip:plain.test:5060")  # evicted: asked again
    assert dns_server.count("plain.test", "A") == 2


# -- failures ------------------------------------------------------------------------------------------------


async def test_silent_dns_raises_locate_error_in_bounded_time(dns_server: DnsResponder) -> None:
    dns_server.silent = True
    locator = make_locator(dns_server, timeout=0.1, lifetime=0.3)
    with trio.fail_after(5), pytest.raises(LocateError) as info:
        await locator.locate(parse_uri_untrusted("sip:alice@example.test"))
    assert info.value.kind == "timeout" and info.value.status == 408
    assert dns_server.count("example.test", "NAPTR") >= 1
    assert locator.statistics()["failures_timeout"] >= 1
    # a timeout is not cached: once DNS answers again, so does the locator
    dns_server.silent = False
    assert (await locate(locator, "sip:alice@example.test"))[0] == tcp("192.0.2.3")


async def test_servfail_raises_and_is_not_cached(dns_server: DnsResponder) -> None:
    dns_server.servfail_names.add("plain.test")
    locator = make_locator(dns_server)
    with trio.fail_after(5), pytest.raises(LocateError) as info:
        await locator.locate(parse_uri_untrusted("sip:plain.test"))
    assert info.value.kind == "servfail" and info.value.status == 503
    assert locator.statistics()["failures_servfail"] == 1
    dns_server.servfail_names.clear()
    assert await locate(locator, "sip:plain.test:5060") == [udp("192.0.2.10"), udp("2001:db8::10")]


async def test_partial_results_survive_a_later_timeout(dns_server: DnsResponder) -> None:
    dns_server.silent_names.add("_sip._tcp.partial.test")
    locator = make_locator(dns_server, timeout=0.1, lifetime=0.3)
    assert await locate(locator, "sip:partial.test") == [udp("192.0.2.2")]
    assert dns_server.count("_sip._tcp.partial.test") >= 1


async def test_one_address_family_failing_keeps_the_other(dns_server: DnsResponder) -> None:
    dns_server.servfail_names.add("tcp1.example.test")
    dns_server.add("v6only.test", "AAAA", "2001:db8::66")
    locator = make_locator(dns_server)
    assert await locate(locator, "sip:v6only.test:5060") == [udp("2001:db8::66")]
    with trio.fail_after(5), pytest.raises(LocateError):
        await locator.locate(parse_uri_untrusted("sip:tcp1.example.test:5060"))


def _all_tasks() -> set[trio.lowlevel.Task]:
    tasks: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        assert task is not None
        tasks.add(task)
        for child_nursery in task.child_nurseries:
            pending.extend(child_nursery.child_tasks)
    return tasks


async def test_cancelling_a_lookup_leaves_nothing_running(dns_server: DnsResponder) -> None:
    dns_server.silent = True
    locator = make_locator(dns_server, timeout=30.0, lifetime=60.0)
    before = _all_tasks()
    fds_before = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def lookup() -> None:
                    await locator.locate(parse_uri_untrusted("sip:plain.test:5060"))

                nursery.start_soon(lookup)
                # wait until both the A and the AAAA query are in flight
                await dns_server.wait_for_queries("plain.test", 2)
                assert len(_all_tasks()) > len(before)
                assert len(os.listdir("/proc/self/fd")) > fds_before
                scope.cancel()
    assert scope.cancelled_caught
    assert _all_tasks() == before
    assert len(os.listdir("/proc/self/fd")) == fds_before  # the query sockets are closed
    # nothing was cached for the interrupted lookup
    assert locator.statistics()["cache_entries"] == 0


async def test_resolve_host(dns_server: DnsResponder) -> None:
    locator = make_locator(dns_server)
    with trio.fail_after(5):
        assert await locator.resolve_host("plain.test") == ["192.0.2.10", "2001:db8::10"]
        assert await locator.resolve_host("192.0.2.8") == ["192.0.2.8"]
        assert await locator.resolve_host("nowhere.test") == []
    dns_server.servfail_names.add("tls1.example.test")
    with trio.fail_after(5), pytest.raises(LocateError):
        await locator.resolve_host("tls1.example.test")


# -- blocklist and config ------------------------------------------------------------------------------------


async def test_blocklisted_targets_filtered_or_moved_last(dns_server: DnsResponder) -> None:
    clock = FakeClock()
    blocklist = Blocklist(duration=30.0)
    locator = make_locator(dns_server, clock=clock, blocklist=blocklist)
    targets = await locate(locator, "sip:plain.test")
    blocklist.add(udp("192.0.2.10"), "timeout", clock.now)
    assert locator.filter_blocked(targets) == [udp("2001:db8::10")]
    with trio.fail_after(5):
        reordered = await locator.locate(parse_uri_untrusted("sip:plain.test"), blocked_last=True)
    assert reordered == [udp("2001:db8::10"), udp("192.0.2.10")]
    assert locator.filter_blocked(targets, now=clock.now + 30) == targets
    assert make_locator(dns_server).filter_blocked(targets) == targets


def test_config_validation_and_resolver() -> None:
    with pytest.raises(ValueError):
        ResolverConfig(transports=frozenset({"sctp"}))
    with pytest.raises(ValueError):
        ResolverConfig(lifetime=0)
    config = ResolverConfig(nameservers=[("127.0.0.1", 5353)], timeout=0.5, lifetime=1.5)
    assert config.transports == frozenset({"udp", "tcp"})
    resolver = build_resolver(config)
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [("127.0.0.1", 5353)]  # type: ignore[union-attr]
    assert resolver.timeout == 0.5 and resolver.lifetime == 1.5 and resolver.cache is None
