"""Helpers for the routing tests: message builders and ``FakeServices``, a scripted ``RouteServices``.

This module holds no tests; the test_routing_*.py modules import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from trioproxy.routing import ContactInfo, LuaScript, RequestState
from trioproxy.sip import Address, Request, parse_message_untrusted

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "routes"
SRC = Address("udp", "192.0.2.10", 5060)
LOCAL = Address("udp", "203.0.113.1", 5060)
MYSELF = {"proxy.example.com", "203.0.113.1"}


def make_request(
    method: str = "INVITE",
    ruri: str = "sip:bob@proxy.example.com",
    *,
    to_tag: str | None = None,
    extra: Sequence[str] = (),
    via_host: str = "192.0.2.10:5060",
    contact: str | None = "<sip:alice@192.0.2.10:5060>",
    body: bytes = b"",
    max_forwards: int | None = 70,
    source: Address | None = SRC,
) -> Request:
    """A parsed request from alice to the R-URI, as the transport hands it over."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch=z9hG4bK-r1;rport",
        'From: "Alice" <sip:alice@example.com>;tag=a1',
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: call-1@example.com",
        f"CSeq: 1 {method}",
        "User-Agent: softphone/1.0",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines.extend(extra)
    lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    msg = parse_message_untrusted(data)
    assert isinstance(msg, Request)
    msg.source = source
    return msg


def make_state(method: str = "INVITE", ruri: str = "sip:bob@proxy.example.com", **kw: Any) -> RequestState:
    """A ``RequestState`` for ``make_request(...)`` received on ``LOCAL``."""
    return RequestState(make_request(method, ruri, **kw), local=LOCAL)


def load(source: str, name: str = "test.lua", **kw: Any) -> LuaScript:
    """Load inline script source."""
    return LuaScript.load(source, name=name, **kw)


@dataclass
class Relayed:
    """What the proxy would have forwarded at a ``t_relay``."""

    ruri: str
    dst_uri: str | None
    branches: list[str]
    record_route: bool
    on_failure: str | None
    on_branch: str | None
    headers: dict[str, list[str]]


@dataclass
class FakeServices:
    """Records every call; results are scripted through the fields."""

    contacts: dict[str, list[ContactInfo]] = field(default_factory=dict)
    relay_rc: int = 1
    check_trans_rc: int = -1
    save_rc: int = 1
    lookup_delay: float = 0.0
    addresses: dict[str, list[str]] = field(default_factory=dict)
    myself: set[str] = field(default_factory=lambda: set(MYSELF))
    calls: list[tuple[str, Any]] = field(default_factory=list)
    replies: list[tuple[int, str, list[tuple[str, str]]]] = field(default_factory=list)
    relays: list[Relayed] = field(default_factory=list)
    fail_lookup: bool = False
    tryings: int = 0  # RouteServices.trying calls (the automatic 100 of an INVITE)

    async def send_reply(
        self, state: RequestState, status: int, reason: str, headers: Sequence[tuple[str, str]]
    ) -> int:
        self.calls.append(("send_reply", status))
        self.replies.append((status, reason, list(headers)))
        return 1

    async def relay(self, state: RequestState) -> int:
        self.calls.append(("relay", str(state.ruri)))
        msg = state.req
        self.relays.append(
            Relayed(
                str(state.ruri),
                state.dst_uri,
                [b.uri for b in state.branches],
                state.record_route,
                state.on_failure,
                state.on_branch,
                {n: msg.get_all(n) for n in ("Max-Forwards", "Route", "X-Screened", "X-Lookup-Tries")},
            )
        )
        return self.relay_rc

    async def trying(self, state: RequestState) -> None:
        self.tryings += 1

    async def check_trans(self, state: RequestState) -> int:
        self.calls.append(("check_trans", state.method))
        return self.check_trans_rc

    async def lookup(self, table: str, aor: str) -> Sequence[ContactInfo]:
        self.calls.append(("lookup", aor))
        if self.lookup_delay:
            await trio.sleep(self.lookup_delay)
        if self.fail_lookup:
            raise ConnectionError("location backend down")
        return list(self.contacts.get(aor, []))

    async def save(self, table: str, state: RequestState, flags: int) -> int:
        self.calls.append(("save", (table, flags, state.received_uri)))
        state.replied = (200, "OK")
        return self.save_rc

    async def unregister(self, table: str, aor: str, ruid: str) -> int:
        self.calls.append(("unregister", (table, aor, ruid)))
        return 1

    async def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", seconds))
        await trio.sleep(seconds)

    async def resolve(self, host: str) -> Sequence[str]:
        self.calls.append(("resolve", host))
        return self.addresses.get(host, [])

    def is_myself(self, host: str, port: int | None) -> bool:
        return host in self.myself

    def names(self) -> list[str]:
        """The names of the calls made, in order."""
        return [c[0] for c in self.calls]
