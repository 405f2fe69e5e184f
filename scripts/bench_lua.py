#!/usr/bin/env python3
"""Per-call cost of running route scripts through the Lua bridge, against in-memory services.

Compares examples/routes/default.lua (an INVITE to a registered user: maxfwd, sanity, NAT test, lookup,
record_route, t_relay: about 30 KSR calls and 2 effects) with a route that only calls t_relay. Messages are
parsed before timing; the figure is the route call alone. Prints the median of the repeats in microseconds.

    .venv/bin/python scripts/bench_lua.py [--calls 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from trioproxy.routing import ContactInfo, LuaScript, RequestState
from trioproxy.sip import Address, Request, parse_message_untrusted

ROOT = Path(__file__).resolve().parents[1]
INVITE = (
    b"INVITE sip:bob@proxy.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-b1;rport\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
    b"Call-ID: bench@example.com\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\nContent-Length: 0\r\n\r\n"
)
SRC = Address("udp", "192.0.2.10", 5060)
LOCAL = Address("udp", "203.0.113.1", 5060)


class Services:
    """Answers at once: bob is registered; relays succeed."""

    contacts = [ContactInfo("sip:bob@192.0.2.40:5062")]

    async def send_reply(
        self, state: RequestState, status: int, reason: str, headers: Sequence[object]
    ) -> int:
        return 1

    async def trying(self, state: RequestState) -> None:
        return None

    async def relay(self, state: RequestState) -> int:
        return 1

    async def check_trans(self, state: RequestState) -> int:
        return -1

    async def lookup(self, table: str, aor: str) -> list[ContactInfo]:
        return self.contacts

    async def save(self, table: str, state: RequestState, flags: int) -> int:
        return 1

    async def unregister(self, table: str, aor: str, ruid: str) -> int:
        return 1

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def resolve(self, host: str) -> list[str]:
        return []

    def is_myself(self, host: str, port: int | None) -> bool:
        return host in ("proxy.example.com", "203.0.113.1")


def states(n: int) -> list[RequestState]:
    out = []
    for _ in range(n):
        msg = parse_message_untrusted(INVITE)
        assert isinstance(msg, Request)
        msg.source = SRC
        out.append(RequestState(msg, local=LOCAL))
    return out


async def measure(script: LuaScript, calls: int, repeats: int) -> float:
    services = Services()
    per_call: list[float] = []
    await script.run_request_route(states(1)[0], services)  # warm up
    for _ in range(repeats):
        batch = states(calls)
        t0 = time.perf_counter()
        for st in batch:
            await script.run_request_route(st, services)
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(per_call)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    default = LuaScript.load(ROOT / "examples" / "routes" / "default.lua")
    relay_only = LuaScript.load("function ksr_request_route() KSR.tm.t_relay() end", name="relay_only.lua")
    empty = LuaScript.load("function ksr_request_route() end", name="empty.lua")
    for label, script in (("empty route", empty), ("t_relay only", relay_only), ("default.lua", default)):
        us = await measure(script, args.calls, args.repeats)
        print(f"{label:14s} {us:8.1f} us/call (median of {args.repeats} x {args.calls})")


if __name__ == "__main__":
    trio.run(main)
