"""Contract tests of LocationStore, run against every backend (memory, sqlite, redis)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
import trio

from tests.redis_server import unique_prefix
from trioproxy.location import (
    Binding,
    LocationStore,
    MemoryStore,
    aor_key,
    format_source,
    list_bindings,
    open_store,
    parse_source,
    remove_binding,
    run_purger,
    store_counts,
)
from trioproxy.location.sqlite_store import SqliteStore
from trioproxy.sip import Address

T0 = 1_000_000.0


def binding(
    aor: str = "alice@example.com", contact: str = "sip:alice@10.0.0.1:5060", **kw: object
) -> Binding:
    values: dict[str, object] = {
        "aor": aor, "contact": contact, "expires_at": T0 + 3600, "q": 1.0, "call_id": "cid-1", "cseq": 1,
        "last_modified": T0,
    }  # fmt: skip
    values.update(kw)
    return Binding(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/location.db"
    base = request.getfixturevalue("redis_server_url")
    return f"{base}?prefix={unique_prefix()}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[LocationStore]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


async def test_open_store_picks_backend(store: LocationStore, store_url: str) -> None:
    assert isinstance(store, LocationStore)
    kind = store_url.partition(":")[0]
    assert (
        type(store).__name__
        == {"memory": "MemoryStore", "sqlite": "SqliteStore", "redis": "RedisStore"}[kind]
    )


async def test_put_get_roundtrip_keeps_every_field(store: LocationStore) -> None:
    b = binding(
        q=0.5, cseq=7, path=("<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"),
        received="udp:203.0.113.7:40000", socket="udp:192.0.2.1:5060",
        instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", reg_id=2, user_agent="phone/1.0",
        flags=5,
    )  # fmt: skip
    await store.put(b)
    assert await store.get("alice@example.com", T0) == [b]
    assert await store.get("bob@example.com", T0) == []


async def test_put_replaces_same_contact(store: LocationStore) -> None:
    await store.put(binding(cseq=1))
    await store.put(binding(cseq=2, q=0.3))
    got = await store.get("alice@example.com", T0)
    assert [(b.cseq, b.q) for b in got] == [(2, 0.3)]


async def test_get_never_returns_expired(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1", expires_at=T0 + 10))
    await store.put(binding(contact="sip:a@h2", expires_at=T0 + 100))
    assert {b.contact for b in await store.get("alice@example.com", T0 + 9.5)} == {"sip:a@h1", "sip:a@h2"}
    assert {b.contact for b in await store.get("alice@example.com", T0 + 10)} == {"sip:a@h2"}
    assert await store.get("alice@example.com", T0 + 100) == []


async def test_delete_and_delete_aor(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1"))
    await store.put(binding(contact="sip:a@h2"))
    await store.put(binding(aor="bob@example.com", contact="sip:b@h3"))
    assert await store.delete("alice@example.com", "sip:a@h1") is True
    assert await store.delete("alice@example.com", "sip:a@h1") is False
    assert [b.contact for b in await store.get("alice@example.com", T0)] == ["sip:a@h2"]
    assert await store.delete_aor("alice@example.com") == 1
    assert await store.get("alice@example.com", T0) == []
    assert await store.delete_aor("alice@example.com") == 0
    assert await store.list_aors() == ["bob@example.com"]


async def test_update_applies_puts_and_removes_atomically(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1", cseq=1))
    await store.put(binding(contact="sip:a@h2", cseq=1))
    ok = await store.update(
        "alice@example.com", [binding(contact="sip:a@h3", cseq=2)], ["sip:a@h1"], guard=("cid-1", 2)
    )
    assert ok is True
    assert {b.contact for b in await store.get("alice@example.com", T0)} == {"sip:a@h2", "sip:a@h3"}


async def test_update_guard_blocks_stale_cseq_and_changes_nothing(store: LocationStore) -> None:
    # RFC 3261 10.3 step 7: same Call-ID, CSeq not higher than stored -> abort, nothing applied.
    await store.put(binding(contact="sip:a@h1", cseq=5))
    await store.put(binding(contact="sip:a@h2", cseq=1, call_id="other"))
    for stale in (5, 4):
        ok = await store.update(
            "alice@example.com",
            [binding(contact="sip:a@h9", cseq=stale)],
            ["sip:a@h1", "sip:a@h2"],
            guard=("cid-1", stale),
        )
        assert ok is False
    assert {(b.contact, b.cseq) for b in await store.get("alice@example.com", T0)} == {
        ("sip:a@h1", 5),
        ("sip:a@h2", 1),
    }
    # A different Call-ID is not blocked, whatever its CSeq.
    assert await store.update("alice@example.com", [], ["sip:a@h1"], guard=("new-call", 1)) is True
    # A higher CSeq with the same Call-ID is not blocked.
    assert await store.update("alice@example.com", [binding(contact="sip:a@h2", call_id="other", cseq=2)],
                              guard=("other", 2)) is True  # fmt: skip
    assert [(b.contact, b.cseq) for b in await store.get("alice@example.com", T0)] == [("sip:a@h2", 2)]


async def test_update_removing_last_binding_drops_aor(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1"))
    assert await store.update("alice@example.com", [], ["sip:a@h1"]) is True
    assert await store.list_aors() == []
    assert await store.counts() == (0, 0)


async def test_list_aors_paging_sorted(store: LocationStore) -> None:
    names = [f"user{i:02d}@example.com" for i in range(25)]
    for i, name in enumerate(reversed(names)):
        await store.put(binding(aor=name, contact=f"sip:u{i}@10.0.0.{i}"))
    pages = [await store.list_aors(offset, 10) for offset in (0, 10, 20, 30)]
    assert pages[0] == names[:10]
    assert pages[1] == names[10:20]
    assert pages[2] == names[20:]
    assert pages[3] == []


async def test_counts(store: LocationStore) -> None:
    assert await store.counts() == (0, 0)
    await store.put(binding(contact="sip:a@h1", expires_at=T0 + 10))
    await store.put(binding(contact="sip:a@h2", expires_at=T0 + 100))
    await store.put(binding(aor="bob@example.com", contact="sip:b@h1", expires_at=T0 + 10))
    assert await store.counts() == (2, 3)
    assert await store.counts(T0 + 50) == (1, 1)
    assert await store_counts(store, T0) == {"aors": 2, "contacts": 3}


async def test_purge_expired(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1", expires_at=T0 + 10))
    await store.put(binding(contact="sip:a@h2", expires_at=T0 + 100))
    await store.put(binding(aor="bob@example.com", contact="sip:b@h1", expires_at=T0 + 10))
    assert await store.purge_expired(T0 + 10) == 2
    assert await store.purge_expired(T0 + 10) == 0
    assert await store.counts() == (1, 1)
    assert await store.list_aors() == ["alice@example.com"]


async def test_management_helpers(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1", q=0.5))
    await store.put(binding(contact="sip:a@h2", q=0.9, expires_at=T0 + 60))
    await store.put(binding(aor="bob@example.com", contact="sip:b@h1"))
    dump = await list_bindings(store, T0 + 30)
    assert list(dump) == ["alice@example.com", "bob@example.com"]
    assert [(d["contact"], d["expires"]) for d in dump["alice@example.com"]] == [
        ("sip:a@h2", 30),
        ("sip:a@h1", 3570),
    ]
    one = await list_bindings(store, T0, "bob@example.com")
    assert list(one) == ["bob@example.com"]
    page = await list_bindings(store, T0, offset=1, limit=1)
    assert list(page) == ["bob@example.com"]
    assert await remove_binding(store, "alice@example.com", "sip:a@h1") == 1
    assert await remove_binding(store, "alice@example.com", "sip:a@h1") == 0
    assert await remove_binding(store, "bob@example.com") == 1
    assert await store.counts() == (1, 1)


async def test_purger_task_runs_on_interval(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    await store.put(binding(contact="sip:a@h1", expires_at=T0 + 10))
    await store.put(binding(contact="sip:a@h2", expires_at=T0 + 100))
    clock_now = [T0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(run_purger, store, 30.0, clock=lambda: clock_now[0]))
        await trio.sleep(31)  # first purge at T0: nothing expired yet
        assert await store.counts() == (1, 2)
        clock_now[0] = T0 + 50
        await trio.sleep(30)  # second purge at T0 + 50
        assert await store.counts() == (1, 1)
        nursery.cancel_scope.cancel()


def test_binding_json_roundtrip_and_helpers() -> None:
    b = binding(path=("<sip:p;lr>",), reg_id=1, instance="<urn:x>")
    assert Binding.from_json(b.to_json()) == b
    assert b.expires_in(T0 + 0.5) == 3600
    assert b.expires_in(T0 + 3600) == 0
    assert aor_key("Alice", "EXAMPLE.com") == "Alice@example.com"
    assert aor_key("al%69ce", "example.com") == "alice@example.com"
    assert aor_key(None, "Example.COM") == "example.com"
    assert format_source(Address("udp", "203.0.113.9", 5062)) == "udp:203.0.113.9:5062"
    assert format_source(Address("tcp", "2001:db8::1", 5060)) == "tcp:[2001:db8::1]:5060"
    assert format_source('"sip:198.51.100.2:7000;transport=TCP"') == "tcp:198.51.100.2:7000"
    assert format_source("sip:198.51.100.2") == "udp:198.51.100.2:5060"
    assert parse_source("tcp:[2001:db8::1]:5060") == ("tcp", "2001:db8::1", 5060)
    with pytest.raises(ValueError):
        parse_source("nonsense")


async def test_open_store_urls(tmp_path: object) -> None:
    with pytest.raises(ValueError):
        open_store("mongodb://x")
    assert isinstance(open_store(), MemoryStore)
    s = open_store(f"sqlite://{tmp_path}/x.db?synchronous=full")
    assert isinstance(s, SqliteStore)
    assert s.path == f"{tmp_path}/x.db"
    await s.close()


async def test_transact_plans_on_live_snapshot_and_returns_result(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1", expires_at=T0 + 5))
    await store.put(binding(contact="sip:a@h2"))
    seen: list[list[str]] = []

    def plan(snapshot: list[Binding]) -> tuple[list[Binding], list[str]]:
        seen.append(sorted(b.contact for b in snapshot))
        return [binding(contact="sip:a@h3", cseq=2)], ["sip:a@h2"]

    result = await store.transact("alice@example.com", T0 + 10, plan, guard=("cid-1", 2))
    assert seen == [["sip:a@h2"]]  # the expired binding is not offered to the plan
    assert result is not None
    assert [b.contact for b in result] == ["sip:a@h3"]
    assert [b.contact for b in await store.get("alice@example.com", T0 + 10)] == ["sip:a@h3"]


async def test_transact_plan_error_changes_nothing(store: LocationStore) -> None:
    await store.put(binding(contact="sip:a@h1"))

    def plan(snapshot: list[Binding]) -> tuple[list[Binding], list[str]]:
        raise LookupError("refused")

    with pytest.raises(LookupError):
        await store.transact("alice@example.com", T0, plan)
    assert [b.contact for b in await store.get("alice@example.com", T0)] == ["sip:a@h1"]
    # The backend is still usable afterwards (the sqlite transaction was rolled back).
    await store.put(binding(contact="sip:a@h2"))
    assert await store.counts() == (1, 2)
