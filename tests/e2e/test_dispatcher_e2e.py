"""End-to-end: ``examples/routes/lb.lua`` balancing SIPp calls over two SIPp media servers, with OPTIONS
health probes (``[dispatcher] ping_interval``).

One proxy, two callees (``lb_uas.xml``: they answer calls and probes). Calls spread round robin (2 + 2);
one callee is stopped: the probes mark it inactive within ``ping_interval + ping_timeout``, and the next
calls all go to the other one with a single branch each (no failover, so no wait for a dead server); the
callee is started again on its port: the probes bring it back and calls spread again; it hangs (SIGSTOP):
the probes time out after ``ping_timeout`` and mark it inactive the same way. ``trioproxy ctl
dispatcher list|reload`` show the states and read the list again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SIPP_TIMEOUT, Lab, SippRun, port_is_bound, stop_process
from trioproxy.mgmt.client import request

pytestmark = pytest.mark.e2e

LB = Path(__file__).resolve().parents[2] / "examples" / "routes" / "lb.lua"
PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
SLACK = 0.75  # polling the management API, a loaded machine


def _mgmt(lab: Lab) -> tuple[str, int]:
    out = (lab.workdir / "proxy0.out").read_text()
    host_port = out.split("trioproxy management API on http://", 1)[1].split()[0]
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


def _states(mgmt: tuple[str, int]) -> dict[str, str]:
    status, body = request(*mgmt, "GET", "/dispatcher")
    assert status == 200, body
    return {d["uri"]: d["state"] for d in body["sets"]["1"]}


def _wait_state(mgmt: tuple[str, int], uri: str, letter: str, within: float) -> float:
    """Seconds until ``uri``'s state starts with ``letter`` (fails after ``within``)."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if _states(mgmt)[uri].startswith(letter):
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"{uri} not {letter} after {within} s: {_states(mgmt)}")


def _uas(lab: Lab, name: str, port: int) -> SippRun:
    # lab.uas picks a free port; a restarted server needs its old one.
    run = lab._sipp(
        "lb_uas.xml", name=name, port=port, transport="udp", remote=None, rsa=None, calls=100_000,
        keys={}, extra_args=(),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not port_is_bound(port, "udp"):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.diagnostics()
        time.sleep(0.02)
    return run


def _invites(run: SippRun) -> int:
    return len(run.received("INVITE"))


def _ctl(mgmt: tuple[str, int], *args: str) -> Any:
    cmd = [sys.executable, "-m", "trioproxy", "ctl", "--mgmt", f"{mgmt[0]}:{mgmt[1]}", "--json", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=20, check=True)
    return json.loads(done.stdout)


def test_calls_spread_fail_over_and_come_back(lab: Lab) -> None:
    from trioproxy.testing.processes import free_port

    port_a, port_b = free_port(), free_port()
    a = _uas(lab, "media_a", port_a)
    b = _uas(lab, "media_b", port_b)
    uri_a, uri_b = f"sip:127.0.0.1:{port_a}", f"sip:127.0.0.1:{port_b}"
    listing = lab.workdir / "dispatcher.list"
    listing.write_text(f"1 {uri_a} 0 0 duid=a\n1 {uri_b} 0 0 duid=b\n")
    settings = {"ping_interval": PING_INTERVAL, "ping_timeout": PING_TIMEOUT, "probing_mode": 1}
    proxy = lab.proxy(
        script=str(LB), settings={"dispatcher": settings}, extra_args=["--dispatcher-list", str(listing)]
    )
    mgmt = _mgmt(lab)
    _wait_state(mgmt, uri_a, "A", 5)
    _wait_state(mgmt, uri_b, "A", 5)
    assert len(a.received("OPTIONS")) >= 1 and len(b.received("OPTIONS")) >= 1  # probes on the wire

    # 1. round robin: 2 calls each
    lab.expect_success(lab.uac("uac_call.xml", proxy.address, calls=4, name="calls1"))
    assert (_invites(a), _invites(b)) == (2, 2), lab.diagnostics()

    # 2. b stops: the probes see it within ping_interval + ping_timeout; calls go to a only, one branch each
    stop_process(b.proc)
    detected = _wait_state(mgmt, uri_b, "I", 5)
    assert detected <= PING_INTERVAL + PING_TIMEOUT + SLACK, detected
    before = len(proxy.transaction_lines("INVITE"))
    started = time.monotonic()
    lab.expect_success(lab.uac("uac_call.xml", proxy.address, calls=4, name="calls2"))
    elapsed = time.monotonic() - started
    assert _invites(a) == 6, lab.diagnostics()
    lines = proxy.transaction_lines("INVITE")[before:]
    assert len(lines) == 4 and all(" branches=1 status=200 " in line for line in lines), lines
    assert elapsed < SIPP_TIMEOUT

    # 3. b is back on its port: active again at the next probe, calls spread again
    b2 = _uas(lab, "media_b2", port_b)
    recovered = _wait_state(mgmt, uri_b, "A", 5)
    assert recovered <= PING_INTERVAL + PING_TIMEOUT + SLACK, recovered
    lab.expect_success(lab.uac("uac_call.xml", proxy.address, calls=4, name="calls3"))
    assert (_invites(a), _invites(b2)) == (8, 2), lab.diagnostics()

    # 4. b hangs (SIGSTOP: its socket stays open, nothing answers): probes time out after ping_timeout
    os.kill(b2.proc.pid, signal.SIGSTOP)
    try:
        hung = _wait_state(mgmt, uri_b, "I", 5)
        assert hung <= PING_INTERVAL + PING_TIMEOUT + SLACK, hung
        before = len(proxy.transaction_lines("INVITE"))
        lab.expect_success(lab.uac("uac_call.xml", proxy.address, calls=2, name="calls4"))
        lines = proxy.transaction_lines("INVITE")[before:]
        assert len(lines) == 2 and all(" branches=1 status=200 " in line for line in lines), lines
    finally:
        os.kill(b2.proc.pid, signal.SIGCONT)
    _wait_state(mgmt, uri_b, "A", 5)

    # 5. the management CLI: states, and a reload that drops b
    shown = _ctl(mgmt, "dispatcher", "list")
    assert {d["uri"]: d["state"] for d in shown["sets"]["1"]} == {uri_a: "AP", uri_b: "AP"}
    assert shown["probes"]["failed"] >= 1
    listing.write_text(f"1 {uri_a} 0 0 duid=a\n")
    assert _ctl(mgmt, "dispatcher", "reload") == {"ok": True, "destinations": 1, "error": None}
    assert list(_states(mgmt)) == [uri_a]
    status, text = request(*mgmt, "GET", "/metrics")
    assert status == 200
    assert f'trioproxy_dispatcher_destination_active{{set="1",uri="{uri_a}"}} 1.0' in text
    print(
        f"probe detection: stopped {detected:.2f} s, hung {hung:.2f} s; recovery {recovered:.2f} s; "
        f"4 calls on one server {elapsed:.2f} s"
    )
