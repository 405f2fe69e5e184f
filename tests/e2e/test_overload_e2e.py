"""Overload shedding against a real ``trioproxy run`` (docs/LIMITS.md, "Overload").

The thresholds are set so low (``lag_high = 0``) that the proxy always counts itself overloaded: after its
first lag samples it refuses every new out-of-dialog request. A caller socket sends INVITEs until one is
answered 503 (a bounded number of tries, no timing asserted), then a BYE with a To tag, which must still be
forwarded to the callee socket and its 200 come back.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any, cast

from .conftest import CORE, HOST, Lab

TRIES = 100  # new INVITEs at most before one must have been refused
PAUSE = 0.05  # seconds between two tries (the shedding level rises over about a second)
WAIT = 5.0  # seconds at most for one answer


def _request(method: str, ruri: str, sport: int, *, call_id: str, to_tag: str = "") -> bytes:
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    to = f"<{ruri}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{sport};branch={branch};rport\r\n"
        f"From: <sip:alice@{HOST}>;tag=a{uuid.uuid4().hex[:6]}\r\n"
        f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:alice@{HOST}:{sport}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _receive(sock: socket.socket, want: str, seconds: float = WAIT) -> str | None:
    """The first datagram whose text contains ``want`` within ``seconds`` (others are skipped)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65535).decode(errors="replace")
        except TimeoutError:
            return None
        if want in data:
            return data
    return None


def _final_status(sock: socket.socket, call_id: str) -> int | None:
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0:
        text = _receive(sock, f"Call-ID: {call_id}", left)
        if text is None:
            return None
        status = int(text.split(" ", 2)[1])
        if status >= 200:
            return status
    return None


def _header(text: str, name: str) -> str | None:
    for line in text.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_new_invites_get_503_with_retry_after_while_an_in_dialog_bye_passes(lab: Lab) -> None:
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        callee.bind((HOST, 0))
        caller.bind((HOST, 0))
        callee_uri = f"sip:bob@{HOST}:{callee.getsockname()[1]}"
        settings = {**CORE["settings"], "overload": {"lag_high": 0.0, "lag_low": 0.0, "retry_after": 3}}
        proxy = lab.proxy(script="none", fork=[[callee_uri]], settings=cast(Any, settings))
        dest = (HOST, proxy.port)
        sport = caller.getsockname()[1]

        refused = None
        for n in range(TRIES):
            call_id = f"new-{n}-{uuid.uuid4().hex[:8]}"
            caller.sendto(_request("INVITE", f"sip:bob@{HOST}:{proxy.port}", sport, call_id=call_id), dest)
            # An INVITE admitted before the shedding began reaches the callee and is left unanswered there;
            # a refused one is answered 503 by the proxy. Either way the next try starts after its 100/503.
            text = _receive(caller, f"Call-ID: {call_id}")
            assert text is not None, proxy.log()
            if text.startswith("SIP/2.0 503 "):
                refused = text
                break
            time.sleep(PAUSE)
        assert refused is not None, f"no 503 after {TRIES} INVITEs\n{proxy.log()}"
        assert _header(refused, "Retry-After") == "3", refused

        # In-dialog (a To tag): forwarded to the callee, whose 200 comes back.
        bye_id = f"dialog-{uuid.uuid4().hex[:8]}"
        caller.sendto(_request("BYE", callee_uri, sport, call_id=bye_id, to_tag="b1"), dest)
        forwarded = _receive(callee, f"Call-ID: {bye_id}")
        assert forwarded is not None and forwarded.startswith("BYE "), proxy.log()
        answer = forwarded.split("\r\n\r\n", 1)[0].split("\r\n")
        vias = [ln for ln in answer if ln.lower().startswith(("via:", "v:"))]
        keep = [ln for ln in answer[1:] if ln.lower().startswith(("via:", "v:", "from:", "to:", "call-id:", "cseq:"))]
        assert vias, forwarded
        ok = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
        callee.sendto(ok.encode(), (HOST, proxy.port))
        assert _final_status(caller, bye_id) == 200, proxy.log()
    finally:
        callee.close()
        caller.close()


FLOOD = 2500  # new INVITEs sent as fast as one socket can: far more than the proxy handles in a second
RECOVERY_TRIES = 60  # fresh INVITEs, RECOVERY_PAUSE apart, at most before one must be relayed again
RECOVERY_PAUSE = 0.25


def test_a_flood_is_shed_in_dialog_requests_pass_and_it_recovers_by_itself(lab: Lab) -> None:
    callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (callee, caller, flooder):
            sock.bind((HOST, 0))
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        callee_uri = f"sip:bob@{HOST}:{callee.getsockname()[1]}"
        settings = {**CORE["settings"], "overload": {"lag_high": 0.05, "lag_low": 0.01, "retry_after": 5}}
        proxy = lab.proxy(script="none", fork=[[callee_uri]], settings=cast(Any, settings))
        dest = (HOST, proxy.port)
        ruri = f"sip:bob@{HOST}:{proxy.port}"
        fport = flooder.getsockname()[1]
        for n in range(FLOOD):
            flooder.sendto(_request("INVITE", ruri, fport, call_id=f"flood-{n}"), dest)

        # In the middle of the flood a call in progress goes on: its BYE is relayed and its 200 comes back.
        sport = caller.getsockname()[1]
        bye_id = f"dialog-{uuid.uuid4().hex[:8]}"
        caller.sendto(_request("BYE", callee_uri, sport, call_id=bye_id, to_tag="b1"), dest)
        forwarded = _receive(callee, f"Call-ID: {bye_id}", 20.0)
        assert forwarded is not None and forwarded.startswith("BYE "), proxy.log()
        head = forwarded.split("\r\n\r\n", 1)[0].split("\r\n")
        names = ("via:", "v:", "from:", "to:", "call-id:", "cseq:")
        keep = "\r\n".join(ln for ln in head[1:] if ln.lower().startswith(names))
        callee.sendto(f"SIP/2.0 200 OK\r\n{keep}\r\nContent-Length: 0\r\n\r\n".encode(), dest)
        assert _final_status(caller, bye_id) == 200, proxy.log()

        # Part of the flood was refused at once with 503 + Retry-After.
        refused = 0
        flooder.settimeout(2.0)
        try:
            while True:
                got = flooder.recv(65535).decode(errors="replace")
                if got.startswith("SIP/2.0 503 ") and _header(got, "Retry-After") == "5":
                    refused += 1
        except TimeoutError:
            pass
        assert refused > 0, proxy.log()

        # When the flood is over the proxy recovers by itself: a new INVITE is relayed (100 Trying), not refused.
        recovered = False
        for n in range(RECOVERY_TRIES):
            call_id = f"after-{n}-{uuid.uuid4().hex[:8]}"
            caller.sendto(_request("INVITE", ruri, sport, call_id=call_id), dest)
            answer = _receive(caller, f"Call-ID: {call_id}")
            assert answer is not None, proxy.log()
            if answer.startswith("SIP/2.0 100 "):
                recovered = True
                break
            time.sleep(RECOVERY_PAUSE)
        assert recovered, f"still refusing after {RECOVERY_TRIES} tries\n{proxy.log()}"
    finally:
        callee.close()
        caller.close()
        flooder.close()
