"""Redis backend specifics: key layout with TTLs, sharing between instances, the atomic CSeq re-check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import redis
import trio

from tests.redis_server import unique_prefix
from trioproxy.location import Binding, Registrar, open_store
from trioproxy.location.redis_store import RedisStore
from trioproxy.sip import Request

T0 = 1_700_000_000.0
AOR = "alice@example.com"


def register(contact: str, cseq: int, call_id: str = "shared-1") -> Request:
    return Request.build(
        "REGISTER",
        "sip:example.com",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-r"),
            ("From", "<sip:alice@example.com>;tag=1"),
            ("To", "<sip:alice@example.com>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", contact),
        ],
    )


@pytest.fixture
def url(redis_server_url: str) -> str:
    return f"{redis_server_url}?prefix={unique_prefix()}"


@pytest.fixture
async def two_instances(url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    a, b = open_store(url), open_store(url)
    assert isinstance(a, RedisStore) and isinstance(b, RedisStore)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_keys_carry_ttl_of_the_binding(url: str, redis_server_url: str) -> None:
    store = open_store(url)
    registrar = Registrar(store)
    resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=120", 1), now=T0)
    assert resp.status == 200
    prefix = url.split("prefix=")[1]
    client = redis.Redis.from_url(redis_server_url, decode_responses=True)
    try:
        binding_ttl = client.ttl(f"{prefix}{{{AOR}}}:sip:a@10.0.0.1")
        set_ttl = client.ttl(f"{prefix}{{{AOR}}}")
        assert 60 < binding_ttl <= 120  # the binding's 120 s, counted down by Redis in real time
        assert 60 < set_ttl <= 120
        assert client.smembers(f"{prefix}{{{AOR}}}") == {"sip:a@10.0.0.1"}
        assert client.zrange(f"{prefix}aors", 0, -1) == [AOR]
        # A binding key that Redis expired (simulated by deleting it) is cleaned out of the set on read.
        client.delete(f"{prefix}{{{AOR}}}:sip:a@10.0.0.1")
        assert await store.get(AOR, T0) == []
        assert client.exists(f"{prefix}{{{AOR}}}") == 0
        assert client.zrange(f"{prefix}aors", 0, -1) == []
    finally:
        client.close()
        await store.close()


async def test_instances_share_bindings(two_instances: tuple[RedisStore, RedisStore]) -> None:
    a, b = two_instances
    await Registrar(a).save(register("<sip:a@10.0.0.1>", 1), now=T0)
    found = await Registrar(b).lookup(AOR, T0)
    assert [x.contact for x in found] == ["sip:a@10.0.0.1"]
    # The CSeq stored by instance a orders the REGISTERs instance b sees.
    assert (await Registrar(b).save(register("<sip:a@10.0.0.1>", 1), now=T0)).status == 500
    assert (await Registrar(b).save(register("<sip:a@10.0.0.1>;expires=0", 2), now=T0)).status == 200
    assert await a.get(AOR, T0) == []


async def test_overtaken_register_fails_instead_of_undoing(
    two_instances: tuple[RedisStore, RedisStore],
) -> None:
    a, b = two_instances
    newer = Binding(AOR, "sip:a@10.0.0.1", T0 + 600, call_id="shared-1", cseq=9, last_modified=T0)

    def plan(snapshot: list[Binding]) -> tuple[Sequence[Binding], Sequence[str]]:
        # Between a's read and a's write, instance b stores CSeq 9 for the same Call-ID.
        assert snapshot == []
        assert b._update_sync(AOR, [newer], (), ("shared-1", 9))
        older = Binding(AOR, "sip:a@10.0.0.1", T0 + 3600, call_id="shared-1", cseq=8, last_modified=T0)
        return [older], []

    with trio.fail_after(10):
        result = await a.transact(AOR, T0, plan, guard=("shared-1", 8))
    assert result is None
    assert await a.get(AOR, T0) == [newer]
