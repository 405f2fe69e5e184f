#!/usr/bin/env python3
"""CPU per call of the proxy core alone: no sockets, no SIPp, no other process.

The real ``Proxy`` and ``LuaRouter`` run ``bench/route.lua`` (fixed next hop, Record-Route) on a fake network
whose peers answer at once: the callee answers each INVITE with 180 and 200 and each BYE with 200, the caller
sends ACK and BYE through the recorded route when its 200 arrives. ``--parallel`` calls are kept in flight.
The figure is this process's CPU time (``time.process_time``) per complete call (INVITE/100/180/200/ACK/BYE/200),
the fake peers' own work included (they build and parse their messages: about a fifth of the total), so it is a
figure to compare versions of trioproxy with, on a shared machine where wall-clock load tests are noisy.

    .venv/bin/python scripts/bench_core.py [--calls 3000] [--parallel 50] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from trioproxy.location import MemoryStore, Registrar, RegistrarPolicy
from trioproxy.proxy import Proxy
from trioproxy.routing.holder import ScriptHolder
from trioproxy.routing.router import LuaRouter
from trioproxy.server import tune_gc
from trioproxy.sip import Address, Request, Response, make_response, parse_message_untrusted
from trioproxy.testing.network import FakeFlow

ROOT = Path(__file__).resolve().parents[1]
PROXY = Address("udp", "127.0.0.1", 5060)
UAC = Address("udp", "127.0.0.2", 5060)
UAS = Address("udp", "127.0.0.3", 5070)


class Net:
    """The proxy's transport, with both peers answering inside the send calls."""

    def __init__(self) -> None:
        self._send, self.incoming = trio.open_memory_channel[Any](100_000)
        self.done = 0
        self.finished = trio.Event()
        self.target = 0

    def inject(self, data: bytes, source: Address) -> None:
        msg = parse_message_untrusted(data)
        msg.source = source
        msg.flow = FakeFlow("udp", PROXY, source)
        self._send.send_nowait(msg)

    async def send_request(self, msg: Request, dest: Address) -> None:
        # The callee: 180 + 200 for an INVITE, 200 for a BYE, nothing for an ACK.
        req = parse_message_untrusted(msg.to_bytes())
        assert isinstance(req, Request)
        if req.method == "INVITE":
            ring = make_response(req, 180, "Ringing", to_tag="uas")
            ok = make_response(req, 200, "OK", to_tag="uas")
            for rr in req.get_all("Record-Route"):
                ring.append("Record-Route", rr)
                ok.append("Record-Route", rr)
            ok.append("Contact", f"<sip:uas@{UAS.host}:{UAS.port}>")
            self.inject(ring.to_bytes(), UAS)
            self.inject(ok.to_bytes(), UAS)
        elif req.method == "BYE":
            self.inject(make_response(req, 200, "OK").to_bytes(), UAS)

    async def send_response(self, msg: Response, flow: Any, **_kw: Any) -> None:
        # The caller: ACK and BYE after the INVITE's 200; the BYE's 200 ends the call.
        resp = parse_message_untrusted(msg.to_bytes())
        assert isinstance(resp, Response)
        if resp.status != 200:
            return
        cseq = resp.cseq
        if cseq.method == "BYE":
            self.done += 1
            if self.done >= self.target:
                self.finished.set()
            return
        route = resp.get_all("Record-Route")
        contact = resp.contacts[0].uri
        call_id = resp.call_id
        for seq, method in ((1, "ACK"), (2, "BYE")):
            lines = [
                f"{method} {contact} SIP/2.0",
                f"Via: SIP/2.0/UDP {UAC.host}:{UAC.port};branch=z9hG4bK{method}{abs(hash(call_id))};rport",
                "Max-Forwards: 70",
                f"From: {resp.get('From')}",
                f"To: {resp.get('To')}",
                f"Call-ID: {call_id}",
                f"CSeq: {seq} {method}",
                *(f"Route: {r}" for r in route),
                "Content-Length: 0",
                "",
                "",
            ]
            self.inject("\r\n".join(lines).encode(), UAC)

    def local_address(self, transport: str, family: socket.AddressFamily = socket.AF_INET) -> Address:
        return PROXY

    def listen_addresses(self) -> list[Address]:
        return [PROXY]

    def record_address(self, local: Address) -> Address:
        return local


def invite(n: int) -> bytes:
    lines = [
        f"INVITE sip:bench@{PROXY.host}:{PROXY.port} SIP/2.0",
        f"Via: SIP/2.0/UDP {UAC.host}:{UAC.port};branch=z9hG4bK-inv{n};rport",
        "Max-Forwards: 70",
        f"From: sipp <sip:sipp@{UAC.host}:{UAC.port}>;tag=uac{n}",
        f"To: <sip:bench@{PROXY.host}:{PROXY.port}>",
        f"Call-ID: {n}-bench@{UAC.host}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:sipp@{UAC.host}:{UAC.port}>",
        "Subject: Performance Test",
        "Content-Type: application/sdp",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def route_script() -> str:
    text = (ROOT / "bench" / "route.lua").read_text()
    return text.replace("@MODE@", "fixed").replace("@UAS1@", f"{UAS.host}:{UAS.port}").replace("@UAS2@", "127.0.0.4")


async def run_calls(calls: int, parallel: int, first: int) -> float:
    holder = ScriptHolder()
    path = Path("/tmp") / f"bench_core_{first}.lua"
    path.write_text(route_script())
    result = holder.reload(path)
    assert result.ok, result.errors
    net = Net()
    router = LuaRouter(holder, Registrar(MemoryStore(), RegistrarPolicy()))
    proxy = Proxy(net, router, domains=[PROXY.host])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        net.target = calls
        started = time.process_time()
        sent = 0
        while sent < calls:
            # Keep ``parallel`` calls in flight.
            while sent < calls and sent - net.done < parallel:
                net.inject(invite(first + sent), UAC)
                sent += 1
            await trio.lowlevel.checkpoint()
        if net.done < calls:
            with trio.move_on_after(30):
                await net.finished.wait()
        spent = time.process_time() - started
        nursery.cancel_scope.cancel()
    assert net.done == calls, f"{net.done} of {calls} calls completed"
    return spent / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one more run")
    args = parser.parse_args()
    tune_gc()  # as `trioproxy run` does
    figures = [trio.run(run_calls, args.calls, args.parallel, i * args.calls) for i in range(args.repeats)]
    print(
        f"core CPU per call: {statistics.median(figures):.0f} us (median of {args.repeats} x {args.calls} calls,"
        f" {args.parallel} in flight; runs: {', '.join(f'{f:.0f}' for f in figures)})"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        trio.run(run_calls, args.calls, args.parallel, 10**7)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
