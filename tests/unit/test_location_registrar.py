"""Registrar rules (RFC 3261 10.3, RFC 3327, RFC 5626) run against every location backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
import trio

from tests.redis_server import unique_prefix
from trioproxy.location import (
    Binding,
    Guard,
    LocationStore,
    MemoryStore,
    Registrar,
    RegistrarPolicy,
    open_store,
    stages,
)
from trioproxy.location.store import Plan
from trioproxy.sip import Address, Request, Response, parse_message_untrusted, parse_uri_untrusted

T0 = 1_700_000_000.0
AOR = "alice@example.com"


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


@pytest.fixture
def registrar(store: LocationStore) -> Registrar:
    return Registrar(store, RegistrarPolicy())


def register(
    *contacts: str,
    expires: int | None = None,
    call_id: str = "reg-call-1",
    cseq: int = 1,
    to: str = "sip:alice@example.com",
    extra: Sequence[tuple[str, str]] = (),
) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-test;rport"),
        ("Max-Forwards", "70"),
        ("From", f"<{to}>;tag=f1"),
        ("To", f"<{to}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
        ("User-Agent", "testphone/2.1"),
    ]
    headers += [("Contact", c) for c in contacts]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    headers += list(extra)
    return Request.build("REGISTER", "sip:example.com", headers)


def contact_expires(resp: Response) -> dict[str, int]:
    """Contact URI -> expires from a 200 (re-parsed from the wire, as a UA would)."""
    wire = parse_message_untrusted(resp.to_bytes())
    out = {}
    for c in wire.contacts:
        value = c.expires
        assert value is not None
        out[str(c.uri)] = value
    return out


async def contacts_of(registrar: Registrar, now: float = T0) -> list[str]:
    return [b.contact for b in await registrar.lookup(AOR, now)]


async def test_register_stores_binding_and_answers_200(registrar: Registrar) -> None:
    resp = await registrar.save(register("<sip:alice@10.0.0.1:5060>"), now=T0, flags=3)
    assert resp.status == 200
    assert contact_expires(resp) == {"sip:alice@10.0.0.1:5060": 3600}
    assert resp.get("Date") == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert resp.to.tag is not None
    assert resp.call_id == "reg-call-1"
    [b] = await registrar.lookup(AOR, T0)
    assert (b.aor, b.contact, b.expires_at, b.q, b.call_id, b.cseq) == (
        AOR, "sip:alice@10.0.0.1:5060", T0 + 3600, 1.0, "reg-call-1", 1,
    )  # fmt: skip
    assert (b.user_agent, b.received, b.path, b.flags, b.last_modified) == ("testphone/2.1", None, (), 3, T0)


async def test_aor_key_from_to_uri_host_case_and_params(registrar: Registrar) -> None:
    req = register("<sip:alice@10.0.0.1>", to="sip:alice@EXAMPLE.COM:5060;transport=udp")
    assert (await registrar.save(req, now=T0)).status == 200
    assert await contacts_of(registrar) == ["sip:alice@10.0.0.1"]
    assert await registrar.lookup("Alice@example.com", T0) == []  # the user part is case-sensitive
    # A URI (such as a Request-URI) is looked up by its AOR key.
    by_uri = await registrar.lookup(parse_uri_untrusted("sip:alice@Example.com;user=phone"), T0)
    assert [b.contact for b in by_uri] == ["sip:alice@10.0.0.1"]
    assert await registrar.registered(parse_uri_untrusted("sips:alice@example.com:5061"), T0) is True


async def test_expires_param_then_header_then_default(registrar: Registrar) -> None:
    req = register("<sip:a@10.0.0.1>;expires=120", "<sip:a@10.0.0.2>", expires=300)
    assert contact_expires(await registrar.save(req, now=T0)) == {
        "sip:a@10.0.0.1": 120,
        "sip:a@10.0.0.2": 300,
    }
    req = register("<sip:a@10.0.0.3>", cseq=2)
    resp = await registrar.save(req, now=T0 + 20)
    assert contact_expires(resp) == {"sip:a@10.0.0.1": 100, "sip:a@10.0.0.2": 280, "sip:a@10.0.0.3": 3600}


async def test_interval_too_brief_423_with_min_expires(registrar: Registrar) -> None:
    resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=59"), now=T0)
    assert (resp.status, resp.get("Min-Expires")) == (423, "60")
    resp = await registrar.save(register("<sip:a@10.0.0.1>", expires=30, cseq=2), now=T0)
    assert resp.status == 423
    assert await registrar.lookup(AOR, T0) == []
    resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=60", cseq=3), now=T0)
    assert contact_expires(resp) == {"sip:a@10.0.0.1": 60}


async def test_expires_above_max_is_clamped(store: LocationStore) -> None:
    registrar = Registrar(store, RegistrarPolicy(max_expires=7200))
    resp = await registrar.save(register("<sip:a@10.0.0.1>", expires=999999), now=T0)
    assert contact_expires(resp) == {"sip:a@10.0.0.1": 7200}
    [b] = await registrar.lookup(AOR, T0)
    assert b.expires_at == T0 + 7200


async def test_removal_by_expires_zero(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>", "<sip:a@10.0.0.3>"), now=T0)
    resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=0", cseq=2), now=T0 + 1)
    assert set(contact_expires(resp)) == {"sip:a@10.0.0.2", "sip:a@10.0.0.3"}
    resp = await registrar.save(register("<sip:a@10.0.0.2>", expires=0, cseq=3), now=T0 + 2)
    assert contact_expires(resp) == {"sip:a@10.0.0.3": 3598}
    # Removing a contact that is not bound is no error.
    resp = await registrar.save(register("<sip:a@10.9.9.9>;expires=0", cseq=4), now=T0 + 2)
    assert resp.status == 200
    assert await contacts_of(registrar, T0 + 2) == ["sip:a@10.0.0.3"]


async def test_star_removes_all_only_alone_with_expires_zero(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>"), now=T0)
    for bad in (
        register("*", cseq=2),
        register("*", expires=10, cseq=2),
        register("*", "<sip:a@10.0.0.9>", expires=0, cseq=2),
    ):
        assert (await registrar.save(bad, now=T0)).status == 400
    assert len(await registrar.lookup(AOR, T0)) == 2
    resp = await registrar.save(register("*", expires=0, cseq=3), now=T0)
    assert resp.status == 200
    assert resp.get_all("Contact") == []
    assert await registrar.lookup(AOR, T0) == []


async def test_star_with_stale_cseq_fails_500(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>", cseq=5), now=T0)
    resp = await registrar.save(register("*", expires=0, cseq=5), now=T0)
    assert resp.status == 500
    assert await contacts_of(registrar) == ["sip:a@10.0.0.1"]
    # Another Call-ID removes it whatever its CSeq (10.3 step 6).
    resp = await registrar.save(register("*", expires=0, cseq=1, call_id="other-call"), now=T0)
    assert resp.status == 200
    assert await registrar.lookup(AOR, T0) == []


async def test_cseq_ordering_same_call_id(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>;expires=100", cseq=10), now=T0)
    for stale in (10, 9):
        resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=0", cseq=stale), now=T0)
        assert resp.status == 500
    [b] = await registrar.lookup(AOR, T0)
    assert (b.cseq, b.expires_at) == (10, T0 + 100)
    resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=200", cseq=11), now=T0)
    assert contact_expires(resp) == {"sip:a@10.0.0.1": 200}
    # A new Call-ID (the UA rebooted) may use any CSeq.
    resp = await registrar.save(register("<sip:a@10.0.0.1>;expires=300", cseq=1, call_id="c2"), now=T0)
    assert contact_expires(resp) == {"sip:a@10.0.0.1": 300}


async def test_request_is_all_or_nothing(registrar: Registrar) -> None:
    # One stale binding in the request aborts the whole update (10.3 step 7, last paragraph).
    await registrar.save(register("<sip:a@10.0.0.1>", cseq=7), now=T0)
    resp = await registrar.save(register("<sip:a@10.0.0.2>", "<sip:a@10.0.0.1>", cseq=7), now=T0)
    assert resp.status == 500
    assert await contacts_of(registrar) == ["sip:a@10.0.0.1"]


async def test_refresh_matches_equivalent_uri(registrar: Registrar) -> None:
    await registrar.save(register("<sip:alice@PHONE.example.net;transport=tcp>"), now=T0)
    resp = await registrar.save(
        register("<sip:alice@phone.example.net;transport=TCP>;expires=500", cseq=2), now=T0 + 5
    )
    assert resp.status == 200
    [b] = await registrar.lookup(AOR, T0 + 5)
    assert (b.cseq, b.expires_at) == (2, T0 + 505)


async def test_q_ordering_lookup_and_stages(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>;q=0.5"), now=T0)
    await registrar.save(register("<sip:a@10.0.0.2>;q=0.5", cseq=2), now=T0 + 1)
    await registrar.save(register("<sip:a@10.0.0.3>", cseq=3), now=T0 + 2)
    await registrar.save(register("<sip:a@10.0.0.4>;q=0.1", cseq=4), now=T0 + 3)
    resp = await registrar.save(register(cseq=5), now=T0 + 3)
    wire = parse_message_untrusted(resp.to_bytes())
    assert {str(c.uri): c.q for c in wire.contacts} == {
        "sip:a@10.0.0.1": 0.5, "sip:a@10.0.0.2": 0.5, "sip:a@10.0.0.3": 1.0, "sip:a@10.0.0.4": 0.1,
    }  # fmt: skip
    found = await registrar.lookup(AOR, T0 + 3)
    assert [b.contact for b in found] == [
        "sip:a@10.0.0.3",
        "sip:a@10.0.0.2",
        "sip:a@10.0.0.1",
        "sip:a@10.0.0.4",
    ]
    grouped = [[b.contact for b in stage] for stage in stages(found)]
    assert grouped == [["sip:a@10.0.0.3"], ["sip:a@10.0.0.2", "sip:a@10.0.0.1"], ["sip:a@10.0.0.4"]]
    assert stages([]) == []


async def test_bad_q_or_expires_is_400(registrar: Registrar) -> None:
    assert (await registrar.save(register("<sip:a@10.0.0.1>;q=1.5"), now=T0)).status == 400
    assert (await registrar.save(register("<sip:a@10.0.0.1>;expires=soon"), now=T0)).status == 400
    assert (await registrar.save(register("<sip:a@10.0.0.1>;reg-id=x"), now=T0)).status == 400
    assert await registrar.lookup(AOR, T0) == []


async def test_max_contacts_reject(store: LocationStore) -> None:
    registrar = Registrar(store, RegistrarPolicy(max_contacts=2))
    resp = await registrar.save(register("<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>", "<sip:a@10.0.0.3>"), now=T0)
    assert resp.status == 403
    assert await registrar.lookup(AOR, T0) == []
    assert (
        await registrar.save(register("<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>", cseq=2), now=T0)
    ).status == 200
    assert (await registrar.save(register("<sip:a@10.0.0.3>", cseq=3), now=T0)).status == 403
    # Refreshing, or replacing one by removing another in the same request, stays within the limit.
    resp = await registrar.save(
        register("<sip:a@10.0.0.1>;expires=0", "<sip:a@10.0.0.3>", cseq=4), now=T0 + 1
    )
    assert set(contact_expires(resp)) == {"sip:a@10.0.0.2", "sip:a@10.0.0.3"}


async def test_max_contacts_drop_oldest(store: LocationStore) -> None:
    registrar = Registrar(store, RegistrarPolicy(max_contacts=2, on_too_many="drop_oldest"))
    await registrar.save(register("<sip:a@10.0.0.1>"), now=T0)
    await registrar.save(register("<sip:a@10.0.0.2>", cseq=2), now=T0 + 10)
    await registrar.save(register("<sip:a@10.0.0.1>", cseq=3), now=T0 + 20)  # refresh: now the newest
    resp = await registrar.save(register("<sip:a@10.0.0.3>", cseq=4), now=T0 + 30)
    assert set(contact_expires(resp)) == {"sip:a@10.0.0.1", "sip:a@10.0.0.3"}
    assert set(await contacts_of(registrar, T0 + 30)) == {"sip:a@10.0.0.1", "sip:a@10.0.0.3"}
    # More new contacts than the limit in one request cannot be satisfied by dropping old ones.
    resp = await registrar.save(
        register("<sip:a@10.0.0.7>", "<sip:a@10.0.0.8>", "<sip:a@10.0.0.9>", cseq=5), now=T0 + 40
    )
    assert resp.status == 403


async def test_path_stored_and_echoed_with_supported_path(registrar: Registrar) -> None:
    paths = [("Path", "<sip:edge1.example.net;lr>"), ("Path", "<sip:edge2.example.net;lr>")]
    req = register("<sip:a@10.0.0.1>", extra=[("Supported", "outbound, path"), *paths])
    resp = await registrar.save(req, now=T0)
    assert resp.status == 200
    assert resp.get_all("Path") == ["<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>"]
    [b] = await registrar.lookup(AOR, T0)
    assert b.path == ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>")


async def test_path_without_supported(store: LocationStore) -> None:
    req = register("<sip:a@10.0.0.1>", extra=[("Path", "<sip:edge1.example.net;lr>")])
    resp = await Registrar(store).save(req, now=T0)
    assert (resp.status, resp.get("Unsupported")) == (420, "path")
    assert await store.get(AOR, T0) == []
    lenient = Registrar(store, RegistrarPolicy(path_mode="lenient"))
    resp = await lenient.save(req, now=T0)
    assert (resp.status, resp.get_all("Path")) == (200, [])
    [b] = await store.get(AOR, T0)
    assert b.path == ()


@dataclass
class FakeFlow:
    local: Address


async def test_received_and_socket(registrar: Registrar) -> None:
    req = register("<sip:a@192.168.1.20:5060>")
    req.flow = FakeFlow(Address("udp", "192.0.2.1", 5060))
    await registrar.save(req, now=T0, received=Address("udp", "203.0.113.5", 41000))
    # A NAT helper may put the source in a `received` Contact parameter instead.
    req = register('<sip:a@192.168.1.21:5060>;received="sip:203.0.113.6:42000;transport=tcp"', cseq=2)
    await registrar.save(req, now=T0)
    got = {b.contact: (b.received, b.socket) for b in await registrar.lookup(AOR, T0)}
    assert got == {
        "sip:a@192.168.1.20:5060": ("udp:203.0.113.5:41000", "udp:192.0.2.1:5060"),
        "sip:a@192.168.1.21:5060": ("tcp:203.0.113.6:42000", None),
    }


async def test_instance_reg_id_replaces_old_binding(registrar: Registrar) -> None:
    inst = '+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'
    await registrar.save(register(f"<sip:a@10.0.0.1;ob>;{inst};reg-id=1", call_id="c1"), now=T0)
    await registrar.save(register(f"<sip:a@10.0.0.5;ob>;{inst};reg-id=2", call_id="c2"), now=T0 + 1)
    # The UA moved (new IP, new Call-ID): same instance and reg-id 1 replaces the first binding.
    resp = await registrar.save(register(f"<sip:a@10.0.0.9;ob>;{inst};reg-id=1", call_id="c3"), now=T0 + 2)
    assert set(contact_expires(resp)) == {"sip:a@10.0.0.5;ob", "sip:a@10.0.0.9;ob"}
    found = {b.contact: (b.instance, b.reg_id) for b in await registrar.lookup(AOR, T0 + 2)}
    assert found == {
        "sip:a@10.0.0.5;ob": ("<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>", 2),
        "sip:a@10.0.0.9;ob": ("<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>", 1),
    }
    wire = parse_message_untrusted(resp.to_bytes())
    assert {c.params.get("reg-id") for c in wire.contacts} == {"1", "2"}
    # The old flow's stale REGISTER (same Call-ID c3, lower CSeq) cannot undo it.
    resp = await registrar.save(register(f"<sip:a@10.0.0.1;ob>;{inst};reg-id=1", call_id="c3"), now=T0 + 3)
    assert resp.status == 500


async def test_query_without_contact(registrar: Registrar) -> None:
    resp = await registrar.save(register(), now=T0)
    assert (resp.status, resp.get_all("Contact")) == (200, [])
    await registrar.save(register("<sip:a@10.0.0.1>;expires=100", cseq=2), now=T0)
    resp = await registrar.save(register(cseq=3), now=T0 + 40)
    assert contact_expires(resp) == {"sip:a@10.0.0.1": 60}
    [b] = await registrar.lookup(AOR, T0 + 40)
    assert b.cseq == 2  # a query changes nothing


async def test_expired_bindings_vanish(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>;expires=60", "<sip:a@10.0.0.2>;expires=120"), now=T0)
    assert len(await registrar.lookup(AOR, T0 + 59)) == 2
    assert await contacts_of(registrar, T0 + 60) == ["sip:a@10.0.0.2"]
    assert await registrar.registered(AOR, T0 + 119) is True
    assert await registrar.registered(AOR, T0 + 120) is False
    resp = await registrar.save(register(cseq=2), now=T0 + 100)
    assert contact_expires(resp) == {"sip:a@10.0.0.2": 20}


async def test_unregister(registrar: Registrar) -> None:
    await registrar.save(register("<sip:a@10.0.0.1>", "<sip:a@Host.example>"), now=T0)
    assert await registrar.unregister(AOR, "sip:a@host.example") == 1
    assert await contacts_of(registrar) == ["sip:a@10.0.0.1"]
    assert await registrar.unregister(AOR) == 1
    assert await registrar.registered(AOR, T0) is False
    assert await registrar.unregister(AOR) == 0


async def test_to_uri_not_sip_is_404(registrar: Registrar) -> None:
    resp = await registrar.save(register("<sip:a@10.0.0.1>", to="mailto:alice@example.com"), now=T0)
    assert resp.status == 404


async def test_concurrent_registers_for_one_aor_are_serialised(registrar: Registrar) -> None:
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        resp = await registrar.save(register(f"<sip:a@10.0.1.{i}>", cseq=i + 1), now=T0 + i)
        results[i] = resp.status

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
    assert results == dict.fromkeys(range(8), 200)
    found: list[Binding] = await registrar.lookup(AOR, T0 + 8)
    assert len(found) == 8


class BrokenStore(MemoryStore):
    async def transact(
        self, aor: str, now: float, plan: Plan, *, guard: Guard | None = None
    ) -> list[Binding] | None:
        raise OSError("disk on fire")


async def test_store_failure_is_500() -> None:
    store = BrokenStore()
    resp = await Registrar(store).save(register("<sip:a@10.0.0.1>"), now=T0)
    assert (resp.status, resp.reason) == (500, "Server Internal Error")
    assert await store.get(AOR, T0) == []
