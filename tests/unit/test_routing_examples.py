"""The example scripts in examples/routes: each loads clean and makes the expected decisions."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioproxy.routing import ContactInfo, HtableStore, LuaScript, RequestState, check_script
from trioproxy.sip import Address, make_response

from .test_routing_support import EXAMPLES, FakeServices, make_state

BOB = "bob@proxy.example.com"


def example(name: str, **kw: object) -> LuaScript:
    return LuaScript.load(EXAMPLES / name, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["default.lua", "ring-all.lua", "serial.lua", "blocklist.lua", "async_lookup.lua", "public.lua", "trunk.lua",
     "lb.lua"],
)  # fmt: skip
def test_examples_check_clean(name: str) -> None:
    result = check_script(EXAMPLES / name)
    assert result.ok, result.errors
    assert result.errors == [] and result.warnings == []


# -- default.lua ----------------------------------------------------------------------------------------


async def route(script: LuaScript, state: RequestState, services: FakeServices) -> RequestState:
    await script.run_request_route(state, services)
    return state


async def test_default_invite_to_registered_user() -> None:
    script = example("default.lua")
    services = FakeServices(
        contacts={BOB: [ContactInfo("sip:bob@192.0.2.40:5062", 1.0), ContactInfo("sip:bob@192.0.2.41", 0.5)]}
    )
    state = await route(script, make_state(), services)
    assert services.names() == ["lookup", "relay"]
    r = services.relays[0]
    assert r.ruri == "sip:bob@192.0.2.40:5062" and r.branches == []
    assert r.record_route and r.on_failure == "failure_next_contact" and r.on_branch == "branch_nat"
    assert r.headers["Max-Forwards"] == ["69"]  # process_maxfwd(10) decrements 70
    assert state.exited
    via = state.req.top_via  # force_rport stamped the caller's Via that is forwarded
    assert (via.params.get("received"), via.params.get("rport")) == ("192.0.2.10", "5060")
    assert [[t.uri for t in s] for s in state.contact_stages] == [["sip:bob@192.0.2.41"]]


async def test_default_invite_to_unknown_user_is_404() -> None:
    services = FakeServices()
    state = await route(example("default.lua"), make_state(), services)
    assert services.names() == ["lookup", "send_reply"]
    assert services.replies[0][:2] == (404, "Not Found")
    assert state.replied == (404, "Not Found")


async def test_default_failure_route_tries_next_contacts() -> None:
    script = example("default.lua")
    services = FakeServices(
        contacts={BOB: [ContactInfo("sip:bob@192.0.2.40", 1.0), ContactInfo("sip:bob@192.0.2.41", 0.5)]}
    )
    state = await route(script, make_state(), services)
    assert state.on_failure == "failure_next_contact"
    state.begin_failure_route(make_response(state.req, 486, "Busy Here"))
    await script.run_failure_route("failure_next_contact", state, services)
    assert [r.ruri for r in services.relays] == ["sip:bob@192.0.2.40", "sip:bob@192.0.2.41"]
    assert state.on_failure == "failure_next_contact"
    # no contacts left: the failure route does nothing and the best reply goes upstream
    state.begin_failure_route(make_response(state.req, 408, "Request Timeout"), timeout=True)
    await script.run_failure_route("failure_next_contact", state, services)
    assert len(services.relays) == 2


async def test_default_failure_route_ignores_other_statuses() -> None:
    script = example("default.lua")
    services = FakeServices(
        contacts={BOB: [ContactInfo("sip:bob@192.0.2.40", 1.0), ContactInfo("sip:bob@192.0.2.41", 0.5)]}
    )
    state = await route(script, make_state(), services)
    state.begin_failure_route(make_response(state.req, 603, "Decline"))
    await script.run_failure_route("failure_next_contact", state, services)
    assert len(services.relays) == 1


async def test_default_register_saves() -> None:
    services = FakeServices()
    state = make_state(
        "REGISTER",
        "sip:proxy.example.com",
        contact="<sip:alice@10.0.0.7:5060>",
        source=Address("udp", "198.51.100.4", 40000),
    )
    await route(example("default.lua"), state, services)
    assert services.calls == [("save", ("location", 0, "sip:198.51.100.4:40000;transport=udp"))]
    assert services.relays == []
    assert state.flags & (1 << 5)


@pytest.mark.parametrize(
    ("kw", "status"),
    [
        ({"max_forwards": 0}, 483),
        ({"extra": ["Proxy-Require: sec-agree"]}, 420),
        ({"ruri": "sip:proxy.example.com"}, 484),
    ],
)
async def test_default_rejections(kw: dict[str, object], status: int) -> None:
    services = FakeServices()
    await route(example("default.lua"), make_state(**kw), services)  # type: ignore[arg-type]
    assert [r[0] for r in services.replies] == [status]
    assert services.relays == []


async def test_default_options_keepalive() -> None:
    services = FakeServices()
    await route(example("default.lua"), make_state("OPTIONS", "sip:proxy.example.com"), services)
    assert services.replies[0][:2] == (200, "Keepalive")


async def test_default_in_dialog() -> None:
    script = example("default.lua")
    services = FakeServices()
    bye = make_state(
        "BYE",
        "sip:bob@192.0.2.40:5062",
        to_tag="b1",
        extra=["Route: <sip:203.0.113.1;lr>"],
    )
    await route(script, bye, services)
    assert services.names() == ["relay"]
    assert services.relays[0].headers["Route"] == []
    # No route set but a foreign Request-URI (a UA that ignored Record-Route): relayed to the peer.
    foreign = FakeServices()
    await route(script, make_state("BYE", "sip:bob@192.0.2.40", to_tag="b1"), foreign)
    assert foreign.names() == ["relay"]
    # No route set and a Request-URI of ours: nothing to route it by.
    stray = FakeServices()
    await route(script, make_state("BYE", "sip:bob@203.0.113.1", to_tag="b1"), stray)
    assert stray.replies[0][0] == 404
    ack = FakeServices(check_trans_rc=-1)
    state = await route(script, make_state("ACK", "sip:bob@203.0.113.1", to_tag="b1"), ack)
    assert ack.names() == ["check_trans"] and state.exited


async def test_default_cancel() -> None:
    script = example("default.lua")
    matched = FakeServices(check_trans_rc=1)
    await route(script, make_state("CANCEL"), matched)
    assert matched.names() == ["check_trans", "relay"]
    unmatched = FakeServices(check_trans_rc=-1)
    await route(script, make_state("CANCEL"), unmatched)
    assert unmatched.names() == ["check_trans"]


# -- ring-all.lua, serial.lua ---------------------------------------------------------------------------


async def test_ring_all_forks_to_every_contact() -> None:
    services = FakeServices(contacts={BOB: [ContactInfo(f"sip:bob@192.0.2.{i}", 1.0) for i in (50, 51, 52)]})
    state = await route(example("ring-all.lua"), make_state(), services)
    r = services.relays[0]
    assert [r.ruri, *r.branches] == ["sip:bob@192.0.2.50", "sip:bob@192.0.2.51", "sip:bob@192.0.2.52"]
    assert r.record_route
    assert (state.fr_inv_timeout, state.fr_timeout) == (30000, 5000)
    none = FakeServices()
    await route(example("ring-all.lua"), make_state(), none)
    assert none.replies[0][0] == 480


async def test_serial_desk_then_mobile_then_voicemail() -> None:
    script = example("serial.lua")
    services = FakeServices()
    state = await route(script, make_state(), services)
    for status in (486, 408, 480):
        name = state.on_failure
        assert name == "next_stage"
        state.begin_failure_route(make_response(state.req, status))
        await script.run_failure_route(name, state, services)
    assert [r.ruri for r in services.relays] == [
        "sip:bob@desk.example.com",
        "sip:bob@mobile.example.com",
        "sip:voicemail@vm.example.com",
    ]
    assert all(r.branches == [] for r in services.relays)
    assert state.on_failure is None  # the last stage re-armed nothing: no stage is left


async def test_serial_stops_when_canceled() -> None:
    script = example("serial.lua")
    services = FakeServices()
    state = await route(script, make_state(), services)
    state.begin_failure_route(make_response(state.req, 487), canceled=True)
    await script.run_failure_route("next_stage", state, services)
    assert len(services.relays) == 1


# -- blocklist.lua --------------------------------------------------------------------------------------


async def test_blocklist_blocks_after_limit_and_expires() -> None:
    now = [0.0]
    store = HtableStore({"blocked": 600, "seen": 60}, clock=lambda: now[0])
    script = example("blocklist.lua", htables=store)
    services = FakeServices()
    for _ in range(20):
        await route(script, make_state(), services)
    assert len(services.relays) == 20 and services.replies == []
    assert services.relays[0].headers["X-Screened"] == ["yes"]
    await route(script, make_state(), services)
    assert services.replies[-1][:2] == (403, "Forbidden")
    now[0] = 100.0  # "seen" expired, "blocked" not yet
    await route(script, make_state(), services)
    assert len(services.replies) == 2 and len(services.relays) == 20
    now[0] = 700.0
    await route(script, make_state(), services)
    assert len(services.relays) == 21


async def test_blocklist_by_user() -> None:
    store = HtableStore()
    store.table("blocked").set("user:alice", 1)
    services = FakeServices()
    await route(example("blocklist.lua", htables=store), make_state(), services)
    assert services.replies[0][0] == 403 and services.relays == []


# -- async_lookup.lua -----------------------------------------------------------------------------------


class LateRegistration(FakeServices):
    """The callee's contact appears after ``appear_at`` seconds of virtual time."""

    appear_at: float = 1.2

    async def lookup(self, table: str, aor: str) -> list[ContactInfo]:
        self.calls.append(("lookup", aor))
        if trio.current_time() >= self.appear_at:
            return [ContactInfo("sip:bob@192.0.2.70")]
        return []


async def test_async_lookup_retries_with_sleep(autojump_clock: trio.testing.MockClock) -> None:
    script = example("async_lookup.lua")
    services = LateRegistration()
    state = make_state()
    start = trio.current_time()
    with trio.fail_after(30):
        await script.run_request_route(state, services)
    assert services.names() == ["lookup", "sleep", "lookup", "sleep", "lookup", "relay"]
    assert trio.current_time() - start == pytest.approx(1.5)
    assert state.vars["tries"] == 2
    assert services.relays[0].headers["X-Lookup-Tries"] == ["2"]
    assert services.relays[0].ruri == "sip:bob@192.0.2.70"


async def test_async_lookup_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    services = FakeServices()
    with trio.fail_after(30):
        await example("async_lookup.lua").run_request_route(make_state(), services)
    assert services.names().count("lookup") == 4
    assert services.replies[0][0] == 404


async def test_async_lookup_does_not_block_other_requests(autojump_clock: trio.testing.MockClock) -> None:
    script = example("async_lookup.lua")
    finished: list[str] = []

    async def one(method: str) -> None:
        await script.run_request_route(make_state(method), FakeServices())
        finished.append(method)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "INVITE")
            await trio.sleep(0.1)
            nursery.start_soon(one, "MESSAGE")
    assert finished == ["MESSAGE", "INVITE"]
