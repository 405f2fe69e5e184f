"""Flood protection and limits against a real ``trioproxy run`` (docs/LIMITS.md), one proxy for the module.

Sources are told apart by their loopback address: the flooder sends from 127.0.0.2 while a SIPp caller on
127.0.0.1 keeps being answered; the TCP tests use addresses in ``[pike] trusted`` so that only the
connection limits act on them.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from . import udp_peer
from .conftest import HOST, Lab, ProxyRun

SCRIPT = Path(__file__).parent / "scripts" / "limits.lua"
DENSITY = 20  # requests per sampling unit (1 s) before a source is blocked
BLOCK_TIME = 3.0
PER_SOURCE = 8  # accepted TCP connections per source address
MESSAGE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, ProxyRun]]:
    lab = Lab(tmp_path_factory.mktemp("limits"))
    try:
        proxy = lab.proxy(
            script=str(SCRIPT),
            settings=cast(
                Any,
                {
                    "pike": {
                        "enabled": True,
                        "sampling_time_unit": 1.0,
                        "reqs_density_per_unit": DENSITY,
                        "block_time": BLOCK_TIME,
                        "trusted": ["127.0.0.3/32", "127.0.0.4/32", "127.0.0.5/32", "127.0.0.6/32"],
                    },
                    "limits": {
                        "tcp_max_connections_per_source": PER_SOURCE,
                        "tcp_message_timeout": MESSAGE_TIMEOUT,
                    },
                },
            ),  # a list value: the lab writes every value as JSON, which TOML reads
        )
        yield lab, proxy
    finally:
        lab.close()


def _options(port: int, source: str, sport: int, *, method: str = "OPTIONS", extra: str = "") -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    return (
        f"{method} sip:svc@{HOST}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:{sport};branch={branch};rport\r\n"
        f"From: <sip:flood@{source}>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:svc@{HOST}:{port}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@{source}\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()




def _mgmt_stats(lab: Lab) -> dict[str, object]:
    out = (lab.workdir / "proxy0.out").read_text()
    url = next(line.split(" on ", 1)[1].strip() for line in out.splitlines() if "management API on" in line)
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as reply:
        data: dict[str, object] = json.loads(reply.read())
    return data


def test_a_flooding_source_is_blocked_while_others_are_answered_and_the_block_lifts(
    guarded: tuple[Lab, ProxyRun],
) -> None:
    lab, proxy = guarded
    flooder = udp_peer.udp_from("127.0.0.2")
    sport = flooder.getsockname()[1]
    try:
        for _ in range(300):
            flooder.sendto(_options(proxy.port, "127.0.0.2", sport), (HOST, proxy.port))
        blocked_at = time.monotonic()
        answered = [a for a in udp_peer.answers(flooder, 1.0) if a.startswith(b"SIP/2.0 200")]
        # Only what came before the block is answered: the rest is dropped before it is parsed.
        assert 0 < len(answered) <= DENSITY + 1, len(answered)

        # Another source goes on being answered meanwhile.
        uac = lab.uac("uac_options.xml", proxy.address, calls=10, extra_args=["-r", "10"])
        lab.expect_success(uac)
        assert len(uac.received(status=200)) == 10

        # Still blocked: a single request from the flooder gets nothing; the management API lists it.
        flooder.sendto(_options(proxy.port, "127.0.0.2", sport), (HOST, proxy.port))
        assert udp_peer.answers(flooder, 0.5) == []
        pike = _mgmt_stats(lab)["pike"]
        assert isinstance(pike, dict)
        assert [b["source"] for b in pike["blocked"]] == ["127.0.0.2"]
        assert pike["dropped"] >= 300 - DENSITY - 1
        assert proxy.log().count("pike: blocking 127.0.0.2") == 1  # logged once per block, not per packet

        # After block_time the source is answered again.
        time.sleep(max(0.0, blocked_at + BLOCK_TIME + 0.3 - time.monotonic()))
        flooder.sendto(_options(proxy.port, "127.0.0.2", sport), (HOST, proxy.port))
        again = udp_peer.answers(flooder, 1.0)
        assert any(a.startswith(b"SIP/2.0 200") for a in again), again
    finally:
        flooder.close()


def _connect(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(2.0)
    sock.connect((HOST, port))
    return sock


def _served(sock: socket.socket) -> bool:
    """Whether the proxy serves this connection: an RFC 5626 ping gets its pong."""
    try:
        sock.sendall(b"\r\n\r\n")
        return sock.recv(16) == b"\r\n"
    except OSError:
        return False


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_tcp_connections_beyond_the_per_source_limit_are_closed_at_once(
    guarded: tuple[Lab, ProxyRun],
) -> None:
    _lab, proxy = guarded
    kept = [_connect("127.0.0.3", proxy.port) for _ in range(PER_SOURCE)]
    try:
        assert all(_served(s) for s in kept)
        extra = [_connect("127.0.0.3", proxy.port) for _ in range(4)]
        kept += extra
        assert all(_closed_by_peer(s, 1.0) for s in extra)
        other = _connect("127.0.0.4", proxy.port)
        kept.append(other)
        assert _served(other)
        assert all(_served(s) for s in kept[:PER_SOURCE])  # those within the limit are untouched
    finally:
        for s in kept:
            s.close()


def test_a_slowloris_connection_is_closed_after_the_message_timeout(guarded: tuple[Lab, ProxyRun]) -> None:
    _lab, proxy = guarded
    sock = _connect("127.0.0.5", proxy.port)
    try:
        head = _options(proxy.port, "127.0.0.5", sock.getsockname()[1]).decode().replace("UDP", "TCP")
        sock.sendall(head[:60].encode())
        started = time.monotonic()
        closed_after = None
        for ch in head[60:90]:  # a byte every 0.2 s: never idle, never finished
            time.sleep(0.2)
            try:
                sock.sendall(ch.encode())
            except OSError:
                closed_after = time.monotonic() - started
                break
            if _closed_by_peer(sock, 0.01):
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "the trickling connection stayed open"
        assert MESSAGE_TIMEOUT - 0.1 <= closed_after <= MESSAGE_TIMEOUT + 1.5, closed_after
    finally:
        sock.close()


def test_max_breadth_is_honoured_and_set(guarded: tuple[Lab, ProxyRun]) -> None:
    _lab, proxy = guarded
    sender = udp_peer.udp_from("127.0.0.6")
    target = udp_peer.udp_from(HOST)  # the three branches all go to this socket
    tport = target.getsockname()[1]
    try:
        sport = sender.getsockname()[1]
        request = _options(proxy.port, "127.0.0.6", sport, method="MESSAGE", extra="Max-Breadth: 2\r\n")
        request = request.replace(
            f"sip:svc@{HOST}:{proxy.port} SIP".encode(), f"sip:svc@{HOST}:{tport} SIP".encode()
        )
        sender.sendto(request, (HOST, proxy.port))
        answers = udp_peer.answers(sender, 1.0)
        assert any(a.startswith(b"SIP/2.0 440 ") for a in answers), answers
        assert udp_peer.answers(target, 0.2) == []  # nothing was forked

        # Without the header the proxy's own breadth (60) is shared by the three branches.
        request = _options(proxy.port, "127.0.0.6", sport, method="MESSAGE")
        request = request.replace(
            f"sip:svc@{HOST}:{proxy.port} SIP".encode(), f"sip:svc@{HOST}:{tport} SIP".encode()
        )
        sender.sendto(request, (HOST, proxy.port))
        forked = udp_peer.answers(target, 1.0)
        firsts = {f for f in forked if f.startswith(b"MESSAGE ")}
        assert len({f.split(b"branch=")[1][:30] for f in firsts}) == 3, forked
        assert all(b"\r\nMax-Breadth: 20\r\n" in f for f in firsts), forked
    finally:
        sender.close()
        target.close()
