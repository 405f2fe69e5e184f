"""Pure parts of server location: SRV ordering (RFC 2782), NAPTR selection and transport rules (RFC 3263)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trioproxy.locate import (
    NaptrRecord,
    SrvRecord,
    default_port,
    default_transport,
    is_ip_address,
    order_srv,
    select_naptr,
    srv_transports,
    uri_transport,
)


def srv(priority: int, weight: int, target: str, port: int = 5060) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


def naptr(order: int, pref: int, service: str, replacement: str, flags: str = "s") -> NaptrRecord:
    return NaptrRecord(order, pref, flags, service, "", replacement)


# -- SRV ordering ---------------------------------------------------------------------------------------------


def test_priorities_ascending_whatever_the_weights() -> None:
    records = [srv(20, 100, "c"), srv(10, 1, "a"), srv(30, 50, "d"), srv(10, 99, "b")]
    rng = random.Random(7)
    for _ in range(200):
        ordered = order_srv(records, rng)
        assert [r.priority for r in ordered] == [10, 10, 20, 30]
        assert sorted(r.target for r in ordered[:2]) == ["a", "b"]
        assert [r.target for r in ordered[2:]] == ["c", "d"]


def test_same_seed_same_order_and_every_record_once() -> None:
    records = [srv(1, w, f"t{w}") for w in (5, 10, 20, 40, 0)]
    first = order_srv(records, random.Random(1234))
    assert first == order_srv(records, random.Random(1234))
    assert Counter(first) == Counter(records)


def test_weights_give_proportional_first_choice() -> None:
    # RFC 2782: the first record is chosen with probability (about) weight / sum of weights
    records = [srv(10, 10, "ten"), srv(10, 30, "thirty"), srv(10, 60, "sixty")]
    rng = random.Random(20260101)
    draws = 20000
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(draws))
    for name, weight in (("ten", 10), ("thirty", 30), ("sixty", 60)):
        assert abs(firsts[name] / draws - weight / 100) < 0.015, (name, firsts)


def test_weights_apply_again_to_the_remaining_records() -> None:
    # after the first pick, the next is drawn among the rest by their weights
    records = [srv(10, 10, "ten"), srv(10, 90, "ninety"), srv(10, 900, "big")]
    rng = random.Random(99)
    seconds: Counter[str] = Counter()
    for _ in range(5000):
        ordered = order_srv(records, rng)
        if ordered[0].target == "big":
            seconds[ordered[1].target] += 1
    share = seconds["ninety"] / (seconds["ninety"] + seconds["ten"])
    assert 0.85 < share < 0.95, seconds


def test_weight_zero_has_a_small_chance_first() -> None:
    # RFC 2782: weight-0 records are placed first, so a draw of 0 picks them: 1 chance in sum+1
    records = [srv(1, 0, "zero"), srv(1, 10, "ten")]
    rng = random.Random(5)
    draws = 11000
    zero_first = sum(order_srv(records, rng)[0].target == "zero" for _ in range(draws))
    assert 0.06 < zero_first / draws < 0.12
    assert zero_first < draws / 2


def test_all_zero_weights_share_evenly() -> None:
    records = [srv(1, 0, name) for name in "abc"]
    rng = random.Random(3)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(9000))
    assert set(firsts) == {"a", "b", "c"}
    assert all(2700 < n < 3300 for n in firsts.values()), firsts


def test_order_srv_of_nothing() -> None:
    assert order_srv([], random.Random(0)) == []


# -- NAPTR ---------------------------------------------------------------------------------------------------


def test_naptr_sorted_by_order_then_preference_and_filtered() -> None:
    records = [
        naptr(20, 10, "SIP+D2U", "_sip._udp.b.test"),
        naptr(10, 50, "SIP+D2T", "_sip._tcp.a.test"),
        naptr(10, 40, "SIP+D2U", "_sip._udp.a.test"),
        naptr(10, 10, "SIP+D2S", "_sip._sctp.a.test"),  # SCTP: not supported
        naptr(5, 10, "SIP+D2U", "x.test", flags="a"),  # not a terminal "s" record
        naptr(10, 45, "SIPS+D2T", "_sips._tcp.a.test"),  # TLS not enabled
    ]
    chosen = select_naptr(records, secure=False, transports={"udp", "tcp"})
    assert [(r.replacement, t) for r, t in chosen] == [
        ("_sip._udp.a.test", "udp"),
        ("_sip._tcp.a.test", "tcp"),
        ("_sip._udp.b.test", "udp"),
    ]


def test_naptr_sip_uri_keeps_sips_records_when_tls_is_enabled() -> None:
    records = [naptr(10, 10, "SIPS+D2T", "_sips._tcp.a.test"), naptr(10, 20, "sip+d2u", "_sip._udp.a.test")]
    chosen = select_naptr(records, secure=False, transports={"udp", "tls"})
    assert [t for _, t in chosen] == ["tls", "udp"]


def test_naptr_sips_uri_discards_non_sips_services() -> None:
    records = [
        naptr(10, 10, "SIP+D2U", "_sip._udp.a.test"),
        naptr(10, 20, "SIP+D2T", "_sip._tcp.a.test"),
        naptr(10, 30, "SIPS+D2T", "_sips._tcp.a.test"),
        naptr(10, 40, "SIPS+D2W", "_sips._ws.a.test"),
    ]
    chosen = select_naptr(records, secure=True, transports={"udp", "tcp", "tls", "wss"})
    assert [t for _, t in chosen] == ["tls", "wss"]


def test_naptr_websocket_services_only_when_enabled() -> None:
    records = [naptr(10, 10, "SIP+D2W", "_sip._ws.a.test"), naptr(10, 20, "SIP+D2U", "_sip._udp.a.test")]
    assert [t for _, t in select_naptr(records, secure=False, transports={"udp", "tcp"})] == ["udp"]
    assert [t for _, t in select_naptr(records, secure=False, transports={"udp", "ws"})] == ["ws", "udp"]


# -- transports and ports ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secure", "param", "expected"),
    [
        (False, "udp", "udp"),
        (False, "TCP", "tcp"),
        (False, "tls", "tls"),
        (False, "ws", "ws"),
        (False, "sctp", None),
        (True, "tcp", "tls"),
        (True, "tls", "tls"),
        (True, "udp", None),
        (True, "ws", "wss"),
    ],
)
def test_uri_transport(secure: bool, param: str, expected: str | None) -> None:
    assert uri_transport(secure, param) == expected


def test_default_ports_and_transports() -> None:
    assert [default_port(t) for t in ("udp", "tcp", "tls", "ws", "wss")] == [5060, 5060, 5061, 5060, 5061]
    assert default_transport(False, {"udp", "tcp"}) == "udp"
    assert default_transport(False, {"tcp"}) == "tcp"
    assert default_transport(True, {"udp", "tcp", "tls"}) == "tls"
    assert default_transport(True, {"udp", "tcp"}) is None


def test_srv_transports_in_preference_order() -> None:
    assert srv_transports(False, {"tls", "tcp", "udp"}) == ["udp", "tcp", "tls"]
    assert srv_transports(True, {"tls", "tcp", "udp", "wss"}) == ["tls", "wss"]


def test_is_ip_address() -> None:
    assert is_ip_address("192.0.2.1")
    assert is_ip_address("2001:db8::1")
    assert not is_ip_address("example.test")
    assert not is_ip_address("[::1]")
