#!/usr/bin/env python3
"""Server CPU per UDP datagram through trioproxy's transport (receive + parse + deliver + send).

The server (this process) runs ``Transports`` with one UDP listener on 127.0.0.1 and a consumer task that
echoes every message it reads from ``incoming`` back to its source. A client process sends a SIP request
``--count`` times, keeping ``--window`` datagrams in flight, and reads the echoes. The server's CPU time
(``time.process_time``) from the first to the last datagram of a run, divided by the datagrams handled,
is one sample; the median of ``--repeats`` runs is printed, in microseconds per datagram (one datagram in
plus one out).

Modes: ``request`` echoes with ``send_request(msg, msg.source)`` (no header is read); ``response`` answers
with ``send_response(msg, msg.flow)``, which routes by the top Via (RFC 3261 18.2.2, RFC 3581) as a proxy
does. Traffic stays on loopback; every run is bounded in count and time.

    .venv/bin/python scripts/bench_udp.py [--count 20000] [--repeats 5] [--mode request|response|both]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trioproxy.sip import Request
from trioproxy.transport import Flow, Listen, TransportConfig, Transports

RUN_TIMEOUT = 60.0  # seconds, per run


def _message(port: int) -> bytes:
    return (
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport={port};received=127.0.0.1;branch=z9hG4bKbench1\r\n"
        "Max-Forwards: 70\r\n"
        "From: Alice <sip:alice@127.0.0.1>;tag=1928301774\r\n"
        "To: Bob <sip:bob@127.0.0.1>\r\n"
        "Call-ID: a84b4c76e66710@127.0.0.1\r\n"
        "CSeq: 314159 INVITE\r\n"
        f"Contact: <sip:alice@127.0.0.1:{port}>\r\n"
        "Content-Type: application/sdp\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()


def client(port: int, count: int, window: int) -> int:
    """Send ``count`` datagrams to 127.0.0.1:port with ``window`` in flight; return how many came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        data = _message(sock.getsockname()[1])
        dest = ("127.0.0.1", port)
        sent = received = 0
        while sent < min(window, count):
            sock.sendto(data, dest)
            sent += 1
        while received < count:
            try:
                sock.recv(65535)
            except TimeoutError:
                break  # a lost datagram: stop rather than hang
            received += 1
            if sent < count:
                sock.sendto(data, dest)
                sent += 1
        return received


async def one_run(tp: Transports, port: int, count: int, window: int, mode: str) -> tuple[float, int]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--client", str(port), "--count", str(count), "--window", str(window)]
    )
    handled = 0
    start = end = 0.0
    incoming = tp.incoming
    try:
        with trio.move_on_after(RUN_TIMEOUT):
            while handled < count:
                # Drain what is queued without a scheduler round per message (``receive()`` yields even
                # when a message is ready); park only when the channel is empty.
                try:
                    msg = incoming.receive_nowait()
                except trio.WouldBlock:
                    msg = await incoming.receive()
                if handled == 0:
                    start = time.process_time()
                assert isinstance(msg, Request) and msg.source is not None
                if mode == "request":
                    await tp.send_request(msg, msg.source)
                else:
                    assert isinstance(msg.flow, Flow)
                    await tp.send_response(msg, msg.flow)
                handled += 1
        end = time.process_time()
    finally:
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # The first datagram only starts the clock.
    return (end - start) / max(1, handled - 1) * 1e6, handled


async def server(count: int, repeats: int, window: int, modes: list[str]) -> None:
    tp = Transports([Listen("udp", "127.0.0.1", 0)], TransportConfig(incoming_capacity=4 * window))
    async with trio.open_nursery() as nursery:
        await nursery.start(tp.serve)
        port = tp.local_address("udp").port
        for mode in modes:
            samples = []
            for _ in range(repeats):
                per, handled = await one_run(tp, port, count, window, mode)
                if handled != count:
                    print(f"warning: {mode}: {handled} of {count} datagrams came through", file=sys.stderr)
                samples.append(per)
            shown = " ".join(f"{s:.1f}" for s in samples)
            print(
                f"{mode}: median {statistics.median(samples):.1f} us server CPU per datagram "
                f"(in + out; {count} datagrams x {repeats} runs: {shown})"
            )
        stats = tp.statistics()
        print(f"drops {stats.udp_drops}, in {stats.udp_datagrams_in}, out {stats.udp_datagrams_out}")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--mode", choices=["request", "response", "both"], default="both")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        got = client(args.client, args.count, args.window)
        sys.exit(0 if got == args.count else 1)
    modes = ["request", "response"] if args.mode == "both" else [args.mode]
    trio.run(server, args.count, args.repeats, args.window, modes)


if __name__ == "__main__":
    main()
