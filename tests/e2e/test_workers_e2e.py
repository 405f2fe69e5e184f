"""``trioproxy run --workers 2`` end to end: one supervisor and two workers sharing one UDP port.

The peers are test-owned UDP sockets on 127.0.0.1: a callee ``bob`` that registers and answers, and callers
from many source ports (SO_REUSEPORT spreads them over the workers by source address). Which worker handled
a request is visible on the wire: the top Via of what reaches bob names that worker's own port, and the
Record-Route of the call names the same port. One proxy serves the whole module; the tests run in order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import HOST, Lab, ProxyRun
from tests.e2e.udp_peer import udp_from
from trioproxy.mgmt.client import request

SCRIPT = """
function ksr_request_route()
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    return
  end
  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end
    return
  end
  if KSR.is_REGISTER() then
    KSR.registrar.save("location", 0)
    return
  end
  KSR.rr.record_route()
  KSR.hdr.append("X-Version: @VERSION@\\r\\n")
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  KSR.tm.t_relay()
end
"""

MAX_SOURCES = 64  # callers tried until both workers have been seen (the hash is by source port)


@dataclass
class Setup:
    lab: Lab
    proxy: ProxyRun
    script: Path
    mgmt: tuple[str, int]
    bob: socket.socket


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("workers")
    script = workdir / "route.lua"
    script.write_text(SCRIPT.replace("@VERSION@", "1"))
    lab = Lab(workdir)
    bob = udp_from(HOST)
    try:
        settings = {"routing": {"watch": False}, "proxy": {"drain_time": 2.0}}
        proxy = lab.proxy(script=str(script), settings=settings, workers=2)
        assert proxy.stdout_path is not None
        deadline = time.monotonic() + 10  # the route script line comes last
        while "trioproxy route script" not in (announced := proxy.stdout_path.read_text()):
            assert time.monotonic() < deadline, announced
            time.sleep(0.05)
        found = re.search(r"management API on http://([\d.]+):(\d+)", announced)
        assert found, announced
        yield Setup(lab, proxy, script, (found.group(1), int(found.group(2))), bob)
    finally:
        bob.close()
        lab.close()


# -- SIP over plain sockets ---------------------------------------------------------------------------------


_PENDING: dict[object, list[str]] = {}  # datagrams received but not yet asked for, by socket


def _receive(
    sock: socket.socket, want: str, seconds: float = 10.0, method: str | None = None, call_id: str | None = None
) -> str:
    """The first datagram whose first line contains ``want`` (and whose CSeq names ``method``, whose Call-ID
    is ``call_id``, if given); the others received meanwhile are kept for later calls."""
    pending = _PENDING.setdefault(sock.getsockname(), [])

    def wanted(text: str) -> bool:
        if want not in text.split("\r\n", 1)[0]:
            return False
        if call_id is not None and _headers(text, "Call-ID") != [call_id]:
            return False
        return method is None or any(c.endswith(" " + method) for c in _headers(text, "CSeq"))

    for text in pending:
        if wanted(text):
            pending.remove(text)
            return text
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            text = sock.recv(65535).decode()
        except TimeoutError:
            break
        if wanted(text):
            return text
        pending.append(text)
    raise AssertionError(f"nothing with {want!r} within {seconds} s; received {pending}")


def _headers(text: str, name: str) -> list[str]:
    return [ln.split(":", 1)[1].strip() for ln in text.split("\r\n") if ln.lower().startswith(name.lower() + ":")]


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _request(method: str, uri: str, sock: socket.socket, call_id: str, cseq: int, *, branch: str,
             to_tag: str = "", routes: list[str] = (), extra: str = "") -> bytes:  # type: ignore[assignment]
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:{_port(sock)};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:alice@{HOST}>;tag=a{call_id[:6]}",
        f"To: <sip:bob@{HOST}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:alice@{HOST}:{_port(sock)}>",
        *[f"Route: {r}" for r in routes],
    ]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _reply(req: str, status: str, *, to_tag: str = "", contact: str = "") -> bytes:
    """A response to ``req`` (as bob): its Via, Record-Route, From, To, Call-ID and CSeq copied."""
    out = [f"SIP/2.0 {status}"]
    for ln in req.split("\r\n")[1:]:
        name = ln.split(":", 1)[0].strip().lower()
        if name in ("via", "record-route", "from", "call-id", "cseq"):
            out.append(ln)
        elif name == "to":
            out.append(ln + (f";tag={to_tag}" if to_tag and ";tag=" not in ln else ""))
    if contact:
        out.append(f"Contact: <{contact}>")
    return ("\r\n".join(out) + "\r\nContent-Length: 0\r\n\r\n").encode()


def _via_target(req: str) -> tuple[str, int]:
    """Where bob answers a request: the top Via's sent-by (the worker's own port)."""
    sent_by = _headers(req, "Via")[0].split()[1].split(";")[0]
    host, port = sent_by.rsplit(":", 1)
    return host, int(port)


def _branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:12]


def register_bob(s: Setup) -> None:
    call_id = uuid.uuid4().hex
    msg = _request("REGISTER", f"sip:{HOST}", s.bob, call_id, 1, branch=_branch(),
                   extra="Expires: 300").replace(b"sip:alice@", b"sip:bob@")
    s.bob.sendto(msg, (HOST, s.proxy.port))
    assert _receive(s.bob, "200", method="REGISTER").startswith("SIP/2.0 200")


def invite(s: Setup, caller: socket.socket) -> tuple[str, str, str]:
    """Send an INVITE to bob from ``caller``; bob receives it and rings (180). Returns (call_id, the INVITE
    bob received, its branch)."""
    call_id = uuid.uuid4().hex
    branch = _branch()
    caller.sendto(_request("INVITE", f"sip:bob@{HOST}", caller, call_id, 1, branch=branch), (HOST, s.proxy.port))
    received = _receive(s.bob, "INVITE", call_id=call_id)
    assert call_id in received
    s.bob.sendto(_reply(received, "180 Ringing", to_tag="b" + call_id[:6]), _via_target(received))
    assert _receive(caller, "180").startswith("SIP/2.0 180")
    return call_id, received, branch


def worker_port(received: str) -> int:
    return _via_target(received)[1]


def callers_over_both_workers(s: Setup) -> list[tuple[socket.socket, str, str, str]]:
    """Ring bob from new source ports until calls have gone through two different workers (at most
    MAX_SOURCES); the first call of each worker: (caller, call_id, bob's INVITE, branch)."""
    by_worker: dict[int, tuple[socket.socket, str, str, str]] = {}
    for _ in range(MAX_SOURCES):
        caller = udp_from(HOST)
        call_id, received, branch = invite(s, caller)
        port = worker_port(received)
        if port in by_worker:
            cancel(s, caller, call_id, received, branch)
            caller.close()
            continue
        by_worker[port] = (caller, call_id, received, branch)
        if len(by_worker) == 2:
            return list(by_worker.values())
    raise AssertionError(f"{MAX_SOURCES} source ports all went through one worker: {list(by_worker)}")


def cancel(s: Setup, caller: socket.socket, call_id: str, received: str, branch: str) -> None:
    """CANCEL from the caller to the shared port: bob must get it from the worker that has the INVITE."""
    caller.sendto(_request("CANCEL", f"sip:bob@{HOST}", caller, call_id, 1, branch=branch), (HOST, s.proxy.port))
    got = _receive(s.bob, "CANCEL", call_id=call_id)
    assert call_id in got and worker_port(got) == worker_port(received)
    s.bob.sendto(_reply(got, "200 OK"), _via_target(got))
    s.bob.sendto(_reply(received, "487 Request Terminated", to_tag="b" + call_id[:6]), _via_target(received))
    assert _receive(caller, "200", method="CANCEL").startswith("SIP/2.0 200")
    final = _receive(caller, "487", method="INVITE")
    to_tag = re.search(r";tag=([^;\s>]+)", _headers(final, "To")[0])
    assert to_tag
    ack = _request("ACK", f"sip:bob@{HOST}", caller, call_id, 1, branch=branch, to_tag=to_tag.group(1))
    caller.sendto(ack, (HOST, s.proxy.port))


def answer_and_hang_up(s: Setup, caller: socket.socket, call_id: str, received: str) -> None:
    """bob answers; the caller ACKs and hangs up along the Record-Route, which names the worker's port."""
    tag = "b" + call_id[:6]
    s.bob.sendto(_reply(received, "200 OK", to_tag=tag, contact=f"sip:bob@{HOST}:{_port(s.bob)}"), _via_target(received))
    ok = _receive(caller, "200", method="INVITE")
    routes = _headers(ok, "Record-Route")
    assert routes, ok
    assert all(f":{worker_port(received)};" in r for r in routes), (routes, worker_port(received))
    route_set = list(reversed(routes))
    uri = f"sip:bob@{HOST}:{_port(s.bob)}"
    dest = (HOST, worker_port(received))
    caller.sendto(_request("ACK", uri, caller, call_id, 1, branch=_branch(), to_tag=tag, routes=route_set), dest)
    assert call_id in _receive(s.bob, "ACK", call_id=call_id)
    caller.sendto(_request("BYE", uri, caller, call_id, 2, branch=_branch(), to_tag=tag, routes=route_set), dest)
    bye = _receive(s.bob, "BYE", call_id=call_id)
    assert call_id in bye and worker_port(bye) == worker_port(received)
    s.bob.sendto(_reply(bye, "200 OK"), _via_target(bye))
    assert _receive(caller, "200", method="BYE").startswith("SIP/2.0 200")


def mgmt(s: Setup, method: str, path: str) -> tuple[int, object]:
    return request(s.mgmt[0], s.mgmt[1], method, path, timeout=10)


# -- the tests ----------------------------------------------------------------------------------------------


def test_calls_and_cancels_through_both_workers_find_a_user_registered_through_one(setup: Setup) -> None:
    register_bob(setup)
    first = callers_over_both_workers(setup)  # both reach bob: the registration is seen by both workers
    for caller, call_id, received, _branch_id in first:
        answer_and_hang_up(setup, caller, call_id, received)
        caller.close()
    second = callers_over_both_workers(setup)
    for caller, call_id, received, branch in second:
        cancel(setup, caller, call_id, received, branch)
        caller.close()


def test_management_api_totals_every_worker(setup: Setup) -> None:
    before_status, before = mgmt(setup, "GET", "/stats")
    assert before_status == 200 and isinstance(before, dict)
    workers = before["workers"]
    assert [w["index"] for w in workers] == [0, 1] and all(w["pid"] and w["ready"] for w in workers)
    sent = 0
    for _ in range(6):
        caller = udp_from(HOST)
        call_id, received, branch = invite(setup, caller)
        cancel(setup, caller, call_id, received, branch)
        caller.close()
        sent += 1
    status, after = mgmt(setup, "GET", "/stats")
    assert status == 200 and isinstance(after, dict)
    # every INVITE handled by one worker or the other: the sum grew by exactly what was sent
    assert after["proxy"]["requests"]["INVITE"] - before["proxy"]["requests"].get("INVITE", 0) == sent
    status, text = mgmt(setup, "GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    assert re.search(r"^trioproxy_workers 2\.0$", text, re.M), text[:2000]
    status, health = mgmt(setup, "GET", "/health")
    assert status == 200 and isinstance(health, dict) and health["status"] == "ok"


def test_sighup_reload_reaches_both_workers(setup: Setup) -> None:
    setup.script.write_text(SCRIPT.replace("@VERSION@", "2"))
    os.kill(setup.proxy.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        versions: dict[int, str] = {}
        for caller, call_id, received, branch in callers_over_both_workers(setup):
            versions[worker_port(received)] = _headers(received, "X-Version")[-1]
            cancel(setup, caller, call_id, received, branch)
            caller.close()
        if set(versions.values()) == {"2"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(versions.values()) == {"2"}, versions


def test_a_killed_worker_is_restarted_and_calls_go_on(setup: Setup) -> None:
    status, health = mgmt(setup, "GET", "/health")
    assert status == 200 and isinstance(health, dict)
    victim = health["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, health = mgmt(setup, "GET", "/health")
        if status == 200 and isinstance(health, dict):
            now = health["workers"][0]
            if now["pid"] != victim["pid"] and now["ready"]:
                assert now["restarts"] == victim["restarts"] + 1
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker 0 was not restarted: {json.dumps(health)}\n{setup.proxy.log_tail()}")
    assert f"worker 0 pid {now['pid']} restarted" in (setup.proxy.stdout_path or Path()).read_text()
    for caller, call_id, received, _branch_id in callers_over_both_workers(setup):
        answer_and_hang_up(setup, caller, call_id, received)
        caller.close()
