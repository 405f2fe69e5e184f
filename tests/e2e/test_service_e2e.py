"""End-to-end: trioproxy as an operator runs it, with real SIPp peers on 127.0.0.1.

The README's first command, configuration errors refused before anything listens, ``trioproxy ctl`` on a
running proxy, the drain on SIGTERM under a SIPp load (and the second SIGTERM that exits at once), and JSON
log lines. Every process is started here or by the ``lab`` fixture and stopped by its PID; every wait is
bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    START_TIMEOUT,
    Lab,
    ProxyRun,
    SipMessage,
    free_port,
    port_is_bound,
    stop_process,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DEFAULT_SCRIPT = REPO / "trioproxy" / "data" / "default.lua"
HOST = "127.0.0.1"
PYTHON_TRIOPROXY = [sys.executable, "-m", "trioproxy"]
EXIT_TIMEOUT = 15.0  # bound on a proxy's exit once it has no reason to stay
CTL_TIMEOUT = 20.0

# -- helpers ------------------------------------------------------------------------------------------------


@dataclass
class Service:
    """A ``trioproxy run`` started by a test: its process, its SIP address and its management API."""

    run: ProxyRun
    stdout_path: Path
    mgmt: str  # HOST:PORT of the management API

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.run.proc

    @property
    def address(self) -> str:
        return self.run.address

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def get(self, path: str) -> str:
        """The body of GET ``path`` on the management API (an error status too: /health answers 503
        while draining)."""
        try:
            with urllib.request.urlopen(f"http://{self.mgmt}{path}", timeout=CTL_TIMEOUT) as answer:
                return str(answer.read().decode())
        except urllib.error.HTTPError as exc:
            return str(exc.read().decode())

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the proxy did not exit within {timeout} s\n{self.run.log()}")


def start_service(lab: Lab, command: Sequence[str], *, port: int, cwd: Path | None = None) -> Service:
    """Start ``command`` (a ``trioproxy run``), registered with ``lab`` for its PID-based cleanup; wait until
    it has printed its last ready line (the route script, printed after the listeners and the API)."""
    n = len(lab.proxies)
    stdout_path = lab.workdir / f"service{n}.out"
    stderr_path = lab.workdir / f"service{n}.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd or lab.workdir
        )
    run = ProxyRun(port, proc, stderr_path)
    lab.proxies.append(run)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = stdout_path.read_text(errors="replace")
        if "trioproxy route script" in text:
            found = re.search(r"trioproxy management API on http://(\S+)", text)
            assert found, f"no management API line:\n{text}"
            return Service(run, stdout_path, found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"the proxy did not start (exit {proc.poll()}):\n{stdout_path.read_text()}\n{run.log()}")


def write_config(lab: Lab, port: int, *lines: str) -> Path:
    """A configuration file listening on ``port`` (UDP and TCP) with extra TOML lines in [proxy]."""
    path = lab.workdir / f"proxy-{port}.toml"
    body = ["[proxy]", f'listen = ["udp:{HOST}:{port}", "tcp:{HOST}:{port}"]', *lines]
    path.write_text("\n".join(body) + "\n")
    return path


def proxy_service(lab: Lab, *lines: str, extra: Sequence[str] = ()) -> Service:
    """``python -m trioproxy run`` on a free port, its management API on a port of its own choosing."""
    port = free_port()
    config = write_config(lab, port, *lines)
    command = [*PYTHON_TRIOPROXY, "run", "-c", str(config), "--mgmt", f"{HOST}:0", "--workers", "1", *extra]
    return start_service(lab, command, port=port)


def ctl(service: Service, *commands: Sequence[str]) -> list[str]:
    """Run ``trioproxy ctl --mgmt ... ARGS`` for each command (at once: they only read); assert each
    succeeded and return their outputs."""
    procs = [
        subprocess.Popen(
            [*PYTHON_TRIOPROXY, "ctl", "--mgmt", service.mgmt, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for args in commands
    ]
    outputs = []
    for args, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=CTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=5)
            pytest.fail(f"ctl {args} did not exit in time")
        assert proc.returncode == 0, f"ctl {args}: exit {proc.returncode}\n{out.decode()}\n{err.decode()}"
        outputs.append(out.decode())
    return outputs


def sent(messages: list[SipMessage], method: str) -> list[SipMessage]:
    return [m for m in messages if m.direction == "sent" and m.is_request and m.method == method]


# -- 1. the README's first command ---------------------------------------------------------------------------


def readme_run_command() -> list[str]:
    """The ``trioproxy run`` part of the README's first command line (the first indented code line)."""
    for line in README.read_text().splitlines():
        if line.startswith("    ") and line.strip():
            first = line.strip()
            break
    else:
        pytest.fail("README.md has no indented command line")
    parts = [shlex.split(part) for part in first.split("&&")]
    assert any("pip" in p[0] and "install" in p for p in parts), f"the first command does not install: {first}"
    runs = [p for p in parts if p[0].endswith("trioproxy") and p[1:2] == ["run"]]
    assert len(runs) == 1, f"no single `trioproxy run` in the README's first command: {first}"
    return runs[0]


def test_readme_first_command_serves_a_call(lab: Lab, tmp_path: Path) -> None:
    """``.venv/bin/trioproxy run``, no arguments, from an empty folder: defaults on 5060/9060, a call passes."""
    command = readme_run_command()
    assert command[1:] == ["run"], f"the README's run command has arguments: {command}"
    executable = (REPO / command[0]).resolve()
    assert executable.is_file(), f"{command[0]} is missing: run the README's install command in {REPO} first"
    busy = [
        f"{HOST}:{port}/{transport}"
        for port, transport in ((5060, "udp"), (5060, "tcp"), (9060, "tcp"))
        if port_is_bound(port, transport)
    ]
    if busy:
        pytest.fail(
            f"{', '.join(busy)} already in use on this machine: the README's command listens there by default; "
            "stop whatever holds it (`ss -lntup | grep -E ':(5060|9060)'`) and run this test again"
        )
    empty = tmp_path / "cwd"
    empty.mkdir()
    service = start_service(lab, [str(executable), "run"], port=5060, cwd=empty)
    lines = service.stdout().splitlines()
    assert "trioproxy listening on udp:127.0.0.1:5060" in lines, lines
    assert "trioproxy listening on tcp:127.0.0.1:5060" in lines, lines
    assert "trioproxy management API on http://127.0.0.1:9060" in lines, lines
    assert any(ln.startswith(f"trioproxy route script {DEFAULT_SCRIPT}") for ln in lines), lines
    assert json.loads(service.get("/health"))["status"] == "ok"

    uas = lab.uas("uas_answer.xml")
    uac = lab.uac("uac_call.xml", uas.address, rsa=f"{HOST}:5060")
    lab.expect_success(uac, uas)
    invite = uas.received("INVITE")
    assert len(invite) == 1, lab.diagnostics()
    # One process records its listener; workers (the default: one per core) record their own ports.
    own = [f"{HOST}:5060", *re.findall(r"udp:(\S+)", " ".join(ln for ln in lines if ln.startswith("trioproxy worker ")))]
    assert any(address in invite[0].header("record-route") for address in own), lab.diagnostics()
    # ACK and BYE followed the route set: they reached the callee through the proxy (its Via on top).
    for method in ("ACK", "BYE"):
        got = uas.received(method)
        via = got[0].header("via") if len(got) == 1 else ""
        assert any(via.startswith(f"SIP/2.0/UDP {address};") for address in own), lab.diagnostics()
    assert not list(empty.iterdir()), "the proxy wrote files into its working folder"

    os.kill(service.proc.pid, signal.SIGTERM)
    assert service.wait_exit(EXIT_TIMEOUT) == 0, service.run.log()


# -- 2. configuration errors -------------------------------------------------------------------------------


CONFIG_ERRORS = [
    # (case, TOML after the [proxy] listen line, key named, line named, words of the message)
    ("unknown-key", ["listen_udp = true"], "proxy.listen_udp", 3, "unknown key"),
    ("wrong-type", ["[timers]", 't1 = "fast"'], "timers.t1", 4, "expected a number"),
    ("bad-listen", ['listen = ["udp:localhost:5060"]'], "proxy.listen[0]", 2, "must be an IP address"),
    ("unreadable-script", ["[routing]", 'script = "/nonexistent/route.lua"'], "routing.script", 4, "cannot read"),
    ("bad-location", ["[location]", 'url = "mysql://db/location"'], "location.url", 4, "expected memory:"),
]


@pytest.mark.parametrize(("case", "toml", "key", "line", "words"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_bad_config_is_refused(
    lab: Lab, case: str, toml: list[str], key: str, line: int, words: str
) -> None:
    """``run -c`` and ``config --check`` print one line naming file, line and key, exit 2; nothing listens."""
    port, mgmt_port = free_port(), free_port()
    path = lab.workdir / f"{case}.toml"
    body = ["[proxy]", f'listen = ["udp:{HOST}:{port}", "tcp:{HOST}:{port}"]']
    if toml[0].startswith("listen ="):
        body = ["[proxy]", *toml]
    else:
        body += toml
    path.write_text("\n".join([*body, "[mgmt]", f'listen = "{HOST}:{mgmt_port}"']) + "\n")
    commands = {
        "run": [*PYTHON_TRIOPROXY, "run", "-c", str(path)],
        "check": [*PYTHON_TRIOPROXY, "config", "--check", str(path)],
    }
    procs = {
        name: subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=lab.workdir
        )
        for name, cmd in commands.items()
    }
    results: dict[str, tuple[int, str, str]] = {}
    for name, proc in procs.items():
        try:
            raw_out, raw_err = proc.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)
            pytest.fail(f"{name} did not exit on a bad configuration ({case})")
        results[name] = (proc.returncode, raw_out.decode(), raw_err.decode())
    for name, (status, out, err) in results.items():
        assert status == 2, f"{name}: exit {status}\n{out}\n{err}"
        assert out == "", f"{name} printed on stdout: {out!r}"
        assert err.endswith("\n") and err.count("\n") == 1, f"{name}: not one line: {err!r}"
        prefix = f"trioproxy: config error: {path}:{line}: {key}: "
        assert err.startswith(prefix), f"{name}: {err!r} does not start with {prefix!r}"
        assert words in err, f"{name}: {err!r}"
    assert not port_is_bound(port, "udp") and not port_is_bound(port, "tcp") and not port_is_bound(mgmt_port, "tcp")


# -- 3. trioproxy ctl ------------------------------------------------------------------------------------------


def test_ctl_shows_stats_registrations_and_a_call_trace(lab: Lab) -> None:
    """A user registers (SIPp), is called (SIPp): ctl shows the counts, the binding and the call's route."""
    service = proxy_service(lab)
    uas = lab.uas("uas_answer.xml")
    reg = lab.uac(
        "svc_register.xml", service.address, keys={"contact_port": str(uas.port)}, extra_args=["-s", "alice"],
        name="reg",
    )
    lab.expect_success(reg)
    call = lab.uac("uac_call.xml", service.address, extra_args=["-s", "alice"], name="caller")
    lab.expect_success(call, uas)
    call_id = sent(call.messages(), "INVITE")[0].header("call-id")
    assert uas.received("INVITE")[0].header("call-id") == call_id, lab.diagnostics()

    stats_json, stats_text, listing, one_json, human_trace, trace_json, script_json = ctl(
        service,
        ["--json", "stats"],
        ["stats"],
        ["registrations"],
        ["--json", "registrations", f"sip:alice@{HOST}"],
        ["trace", call_id],
        ["--json", "trace", call_id],
        ["--json", "script"],
    )
    stats = json.loads(stats_json)
    assert stats["proxy"]["requests"] == {"REGISTER": 1, "INVITE": 1, "ACK": 1, "BYE": 1}, stats
    assert stats["proxy"]["branches"] >= 1 and stats["proxy"]["requests_active"] == 0, stats
    for method in ("REGISTER", "INVITE", "ACK", "BYE"):
        assert re.search(rf"^\s+{method}: 1$", stats_text, re.MULTILINE), stats_text

    contact = f"sip:alice@{HOST}:{uas.port}"
    assert f"alice@{HOST}" in listing and contact in listing, listing
    one = json.loads(one_json)
    assert contact in json.dumps(one), one

    assert call_id in human_trace and "INVITE" in human_trace, human_trace
    trace = json.loads(trace_json)
    assert trace["call_id"] == call_id, trace
    methods = [r["method"] for r in trace["requests"]]
    assert methods == ["INVITE", "ACK", "BYE"], trace
    events = trace["requests"][0]["events"]
    kinds = [e["kind"] for e in events]
    assert {"route", "lookup", "relay", "branch", "end"} <= set(kinds) and kinds[-1] == "end", events
    route = next(e for e in events if e["kind"] == "route")
    assert route["name"] == "ksr_request_route", events
    for ksr in ("KSR.rr.record_route() = 1", "KSR.is_myself_ruri() = True", "KSR.tm.t_load_contacts() = 1"):
        assert ksr in route["ksr"], route
    lookup = next(e for e in events if e["kind"] == "lookup")
    assert lookup["aor"] == f"alice@{HOST}" and [c.startswith(contact) for c in lookup["contacts"]] == [True], events
    relay = next(e for e in events if e["kind"] == "relay")
    assert [t.startswith(contact) for t in relay["targets"]] == [True], events
    branches = [e for e in events if e["kind"] == "branch"]
    assert [b["dest"] for b in branches] == [f"udp:{HOST}:{uas.port}"], events
    assert events[-1]["status"] == 200, events
    for word in ("ksr_request_route", "KSR.rr.record_route() = 1", f"udp:{HOST}:{uas.port}"):
        assert word in human_trace, human_trace

    script = json.loads(script_json)
    assert Path(script["path"]) == DEFAULT_SCRIPT, script
    assert script["sha256"] == hashlib.sha256(DEFAULT_SCRIPT.read_bytes()).hexdigest(), script

    metrics = service.get("/metrics")
    assert re.search(r'^trioproxy_requests_received_total\{method="INVITE"\} 1(\.0)?$', metrics, re.MULTILINE), metrics

    os.kill(service.proc.pid, signal.SIGTERM)
    assert service.wait_exit(EXIT_TIMEOUT) == 0, service.run.log()


# -- 4. SIGTERM: the drain -------------------------------------------------------------------------------------

# SIPp keeps to its rate from its start, so the INVITEs after the signal take at most
# (LOAD_CALLS - LOAD_SIGTERM_AFTER) / LOAD_RATE = 1.2 s to send, while the proxy stays up at least
# 0.3 s (ringing) + LOAD_CALL_MS + 1 s (its quiet time) after the last call it took: every INVITE is answered.
LOAD_CALLS = 120  # calls the caller makes in all
LOAD_RATE = 50  # calls per second
LOAD_SIGTERM_AFTER = 60  # INVITEs the proxy has received when it gets SIGTERM (the rest arrive while draining)
LOAD_CALL_MS = 1500  # a call's length between the ACK and the BYE (SIPp -d)
DRAIN_TIME = 30.0


@dataclass
class CallOutcome:
    """What one call of the caller saw, from its message log (in the order of the log)."""

    call_id: str
    statuses: list[int]  # responses to the INVITE
    bye_statuses: list[int]
    first_index: int  # of the INVITE in the log
    answered_index: int | None  # of the 200 to the INVITE
    ended_index: int | None  # of the 200 to the BYE
    retry_after: str


def call_outcomes(messages: list[SipMessage]) -> dict[str, CallOutcome]:
    calls: dict[str, CallOutcome] = {}
    for i, m in enumerate(messages):
        cid = m.header("call-id")
        if m.direction == "sent" and m.is_request and m.method == "INVITE" and cid not in calls:
            calls[cid] = CallOutcome(cid, [], [], i, None, None, "")
        call = calls.get(cid)
        if call is None or m.direction != "received" or m.status is None:
            continue
        if m.method == "INVITE":
            call.statuses.append(m.status)
            if m.status == 200 and call.answered_index is None:
                call.answered_index = i
            if m.status == 503:
                call.retry_after = m.header("retry-after")
        elif m.method == "BYE":
            call.bye_statuses.append(m.status)
            if m.status == 200 and call.ended_index is None:
                call.ended_index = i
    return calls


def test_sigterm_under_load_drains_without_failing_a_started_call(lab: Lab) -> None:
    """A steady SIPp load; SIGTERM mid-way: calls in progress end (BYE 200), new ones get 503, exit 0.

    Each call of the caller's message log is either completed (INVITE 200, BYE 200) or refused (100, then
    503 with Retry-After, never a ringing or an answer); nothing else (no 408/500, no missing BYE answer:
    a proxy that killed its calls fails here). Calls that were answered before the first 503 and ended
    after it were in progress across the signal: there must be some, or the test would prove nothing.
    """
    service = proxy_service(lab, f"drain_time = {DRAIN_TIME}")
    uas = lab.uas("uas_answer.xml", extra_args=["-m", str(LOAD_CALLS)])
    caller = lab._sipp(
        "svc_uac_load.xml",
        name="load",
        port=free_port(),
        transport="udp",
        remote=uas.address,
        rsa=service.address,
        calls=LOAD_CALLS,
        keys={},
        extra_args=["-r", str(LOAD_RATE), "-d", str(LOAD_CALL_MS)],
    )
    deadline = time.monotonic() + 60
    invites = 0
    while invites < LOAD_SIGTERM_AFTER:
        assert time.monotonic() < deadline and caller.proc.poll() is None, lab.diagnostics()
        invites = json.loads(service.get("/stats"))["proxy"]["requests"].get("INVITE", 0)
        time.sleep(0.05)
    os.kill(service.proc.pid, signal.SIGTERM)

    status = service.wait_exit(DRAIN_TIME + EXIT_TIMEOUT)
    assert status == 0, service.run.log()
    assert "drained completely" in service.run.log(), service.run.log()
    lab.expect_success(caller)  # every call ran its scenario to an end (answered, or refused with 503)

    messages = caller.messages()
    calls = call_outcomes(messages)
    assert len(calls) == LOAD_CALLS, lab.diagnostics()
    completed = {c.call_id for c in calls.values() if c.answered_index is not None and c.ended_index is not None}
    refused = {c.call_id for c in calls.values() if c.statuses[-1:] == [503]}
    for call in calls.values():
        if call.call_id in completed:
            assert 503 not in call.statuses and call.bye_statuses[-1:] == [200], call
        else:
            # Refused: nothing but 100 Trying before the 503 (the call never reached the callee).
            assert call.call_id in refused and set(call.statuses) <= {100, 503}, call
            assert call.retry_after.isdigit(), call
    assert completed and refused and len(completed) + len(refused) == LOAD_CALLS

    first_503 = min(i for i, m in enumerate(messages) if m.direction == "received" and m.status == 503)
    across = [
        c
        for c in calls.values()
        if c.answered_index is not None and c.ended_index is not None and c.answered_index < first_503 < c.ended_index
    ]
    assert len(across) >= 5, f"only {len(across)} calls were in progress across the signal"
    # After the first 503, no new call was taken: every INVITE sent later was refused.
    assert all(c.call_id in refused for c in calls.values() if c.first_index > first_503)
    # The callee saw exactly the completed calls, each with its BYE.
    stop_process(uas.proc)
    uas_calls = {m.header("call-id") for m in uas.received("INVITE")}
    assert uas_calls == completed, lab.diagnostics()
    assert {m.header("call-id") for m in uas.received("BYE")} == completed


def test_second_sigterm_exits_at_once(lab: Lab) -> None:
    """A call rings forever (the callee never answers): SIGTERM drains and waits, a second SIGTERM exits."""
    service = proxy_service(lab, "drain_time = 600.0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as caller:
        callee.bind((HOST, 0))
        caller.bind((HOST, 0))
        callee.settimeout(CTL_TIMEOUT)
        c_port, u_port = caller.getsockname()[1], callee.getsockname()[1]
        invite = (
            f"INVITE sip:bob@{HOST}:{u_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{c_port};branch=z9hG4bK-svc-second-sigterm\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:alice@{HOST}:{c_port}>;tag=svc1\r\n"
            f"To: <sip:bob@{HOST}:{u_port}>\r\n"
            "Call-ID: svc-second-sigterm@127.0.0.1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@{HOST}:{c_port}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        caller.sendto(invite.encode(), (HOST, service.run.port))
        relayed, _ = callee.recvfrom(65535)  # the proxy relayed it: a request in flight, never answered
        assert relayed.startswith(f"INVITE sip:bob@{HOST}:{u_port} SIP/2.0".encode()), relayed

        os.kill(service.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + CTL_TIMEOUT
        while json.loads(service.get("/health"))["status"] != "draining":
            assert time.monotonic() < deadline, service.run.log()
            time.sleep(0.05)
        assert service.proc.poll() is None, service.run.log()  # still waiting for the ringing call

        os.kill(service.proc.pid, signal.SIGTERM)
        assert service.wait_exit(EXIT_TIMEOUT) == 0, service.run.log()
    assert "again, exiting now" in service.run.log(), service.run.log()


# -- 5. JSON logs ---------------------------------------------------------------------------------------------


def test_json_log_format_is_one_object_per_line(lab: Lab) -> None:
    """``--log-format json``: every stderr line of a run (a call, then SIGTERM) is one JSON object."""
    service = proxy_service(lab, extra=["--log-format", "json", "--log-level", "debug"])
    uas = lab.uas("uas_answer.xml")
    uac = lab.uac("uac_call.xml", uas.address, rsa=service.address)
    lab.expect_success(uac, uas)
    os.kill(service.proc.pid, signal.SIGTERM)
    assert service.wait_exit(EXIT_TIMEOUT) == 0, service.run.log()

    lines = service.run.stderr_path.read_text().splitlines()
    assert lines, "no log lines"
    records = []
    for line in lines:
        record = json.loads(line)  # raises on a line that is not one JSON document
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "msg"} <= record.keys(), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        records.append(record)
    messages = [str(r["msg"]) for r in records]
    # The one-line summary of each transaction (at DEBUG), and the signal: the events an operator looks for.
    assert any(m.startswith("INVITE ") and "status=200" in m for m in messages), messages
    assert any(m.startswith("BYE ") and "status=200" in m for m in messages), messages
    assert any("received SIGTERM" in m for m in messages), messages
    assert {r["logger"] for r in records} >= {"trioproxy", "trioproxy.proxy"}, records
