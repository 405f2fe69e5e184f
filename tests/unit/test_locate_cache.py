"""The locator's DNS cache and the destination blocklist: pure, time passed in."""

from __future__ import annotations

import pytest

from trioproxy.locate import NEGATIVE_NOANSWER, NEGATIVE_NXDOMAIN, Blocklist, DnsCache
from trioproxy.sip import Address

# -- DnsCache ------------------------------------------------------------------------------------------------


def test_positive_entry_lives_its_ttl() -> None:
    cache = DnsCache()
    cache.put("a.example.test", "A", ("192.0.2.1",), ttl=60, now=100.0)
    entry = cache.get("A.Example.Test.", "A", now=159.9)
    assert entry is not None and entry.records == ("192.0.2.1",) and entry.negative is None
    assert cache.get("a.example.test", "A", now=160.0) is None
    assert len(cache) == 0


def test_ttl_zero_is_not_cached() -> None:
    cache = DnsCache()
    cache.put("a.example.test", "A", ("192.0.2.1",), ttl=0, now=1.0)
    assert cache.get("a.example.test", "A", now=1.0) is None


def test_nxdomain_answers_every_type_of_the_name() -> None:
    cache = DnsCache()
    cache.put_negative("gone.test", "NAPTR", NEGATIVE_NXDOMAIN, ttl=30, now=0.0)
    for rdtype in ("NAPTR", "A", "AAAA", "SRV"):
        entry = cache.get("gone.test", rdtype, now=29.0)
        assert entry is not None and entry.negative == NEGATIVE_NXDOMAIN and entry.records == ()
    assert cache.get("other.test", "A", now=1.0) is None
    assert cache.get("gone.test", "A", now=30.0) is None


def test_noanswer_is_per_type() -> None:
    cache = DnsCache()
    cache.put_negative("host.test", "AAAA", NEGATIVE_NOANSWER, ttl=30, now=0.0)
    entry = cache.get("host.test", "AAAA", now=1.0)
    assert entry is not None and entry.negative == NEGATIVE_NOANSWER
    assert cache.get("host.test", "A", now=1.0) is None
    with pytest.raises(ValueError):
        cache.put_negative("host.test", "A", "refused", ttl=30, now=0.0)


def test_lru_eviction_keeps_recently_used() -> None:
    cache = DnsCache(max_entries=2)
    cache.put("a.test", "A", ("192.0.2.1",), ttl=100, now=0.0)
    cache.put("b.test", "A", ("192.0.2.2",), ttl=100, now=0.0)
    assert cache.get("a.test", "A", now=1.0) is not None  # a is now the most recently used
    cache.put("c.test", "A", ("192.0.2.3",), ttl=100, now=1.0)
    assert len(cache) == 2
    assert cache.evictions == 1
    assert cache.get("b.test", "A", now=2.0) is None
    assert cache.get("a.test", "A", now=2.0) is not None
    assert cache.get("c.test", "A", now=2.0) is not None


def test_purge_and_clear() -> None:
    cache = DnsCache()
    cache.put("a.test", "A", ("192.0.2.1",), ttl=10, now=0.0)
    cache.put("b.test", "A", ("192.0.2.2",), ttl=100, now=0.0)
    assert cache.purge(now=50.0) == 1
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


# -- Blocklist -----------------------------------------------------------------------------------------------

A = Address("udp", "192.0.2.1", 5060)
B = Address("tcp", "192.0.2.2", 5060)
C = Address("udp", "2001:db8::1", 5060)


def test_blocked_until_duration_expires() -> None:
    blocklist = Blocklist(duration=30.0)
    blocklist.add(A, "timeout", now=100.0)
    assert blocklist.is_blocked(A, now=100.0)
    assert blocklist.is_blocked(A, now=129.9)
    assert not blocklist.is_blocked(B, now=100.0)
    assert not blocklist.is_blocked(A, now=130.0)
    assert blocklist.entries(now=130.0) == []
    stats = blocklist.statistics()
    assert stats == {"entries": 0, "added": 1, "hits": 2, "expired": 1, "evicted": 0}


def test_entries_for_management_and_readding_extends() -> None:
    blocklist = Blocklist(duration=10.0)
    blocklist.add(A, "503", now=0.0)
    blocklist.add(B, "connect refused", now=5.0, duration=60.0)
    blocklist.add(A, "timeout", now=8.0)
    entries = blocklist.entries(now=9.0)
    assert [(e.address, e.reason, e.added, e.expires) for e in entries] == [
        (B, "connect refused", 5.0, 65.0),
        (A, "timeout", 8.0, 18.0),
    ]
    assert [e.address for e in blocklist.entries(now=20.0)] == [B]
    assert blocklist.remove(B)
    assert not blocklist.remove(B)
    assert blocklist.entries(now=20.0) == []


def test_filter_and_blocked_last_keep_order() -> None:
    blocklist = Blocklist(duration=10.0)
    blocklist.add(B, "timeout", now=0.0)
    assert blocklist.filter([A, B, C], now=1.0) == [A, C]
    assert blocklist.blocked_last([B, A, C], now=1.0) == [A, C, B]
    assert blocklist.filter([A, B, C], now=11.0) == [A, B, C]


def test_size_bound_evicts_oldest() -> None:
    blocklist = Blocklist(duration=10.0, max_entries=2)
    for address in (A, B, C):
        blocklist.add(address, "x", now=0.0)
    assert [e.address for e in blocklist.entries(now=1.0)] == [B, C]
    assert blocklist.statistics()["evicted"] == 1
    with pytest.raises(ValueError):
        Blocklist(duration=0)
