"""End-to-end: the Lua routing layer in a real ``trioproxy run`` between real SIPp peers.

- The embedded default script as a registrar and location service: SIPp callees register, a call to the
  user rings every contact of the best q at once (parallel) or one q group after the other (serial,
  the failure route ``failure_next_contact`` on 486).
- Hot reload under a steady load: the script file is rewritten and reloaded while calls flow; a broken
  version is refused with its line, the previous script keeps serving, and no call fails.
- A runaway route (``while true do end``) is cut by the instruction budget: 500 for that call, the
  overrun logged with file:line and counted, the next call served.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, ProxyRun, SippRun, free_port

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"
HOST = "127.0.0.1"
CTL_TIMEOUT = 15.0  # seconds for one `trioproxy ctl` run (a loaded 2-core machine starts Python slowly)
MGMT_TIMEOUT = 15.0  # seconds for the management API to come up after the SIP listeners

# The hot-reload load: LOAD_RATE calls/s for LOAD_SECONDS, the script reloaded every RELOAD_EVERY s.
LOAD_RATE = 50
LOAD_SECONDS = 20
RELOAD_EVERY = 0.8
MAX_RELOADS = 16
LOAD_TIMEOUT = LOAD_SECONDS + 60  # SIPp's own -timeout for the load, seconds


# -- helpers ------------------------------------------------------------------------------------------------


def start_proxy(lab: Lab, script: Path | str | None = None) -> tuple[ProxyRun, str]:
    """A proxy with its management API on a free port; ``script`` None keeps the embedded default."""
    mgmt = f"{HOST}:{free_port()}"
    args = ["--mgmt", mgmt]
    if script is not None:
        args += ["--script", str(script)]
    proxy = lab.proxy(extra_args=args)
    stdout = lab.workdir / f"proxy{lab.proxies.index(proxy)}.out"
    deadline = time.monotonic() + MGMT_TIMEOUT
    while time.monotonic() < deadline:
        text = stdout.read_text(errors="replace")
        if "management API on" in text and "route script" in text:
            return proxy, mgmt
        if proxy.proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"the proxy's management API did not come up:\n{stdout.read_text()}\n{proxy.log()}")


def ctl(mgmt: str, *command: str) -> tuple[int, dict[str, object]]:
    """Run ``trioproxy ctl --mgmt MGMT --json COMMAND...``: its exit code and its JSON answer."""
    args = [sys.executable, "-m", "trioproxy", "ctl", "--mgmt", mgmt, "--json", *command]
    done = subprocess.run(args, capture_output=True, timeout=CTL_TIMEOUT, check=False)
    try:
        body = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"ctl {command} answered no JSON (exit {done.returncode}): {done.stdout!r} {done.stderr!r}"
        )
    assert isinstance(body, dict), body
    return done.returncode, body


def mgmt_http(mgmt: str, method: str, path: str) -> tuple[int, dict[str, object]]:
    """One request to the management API over HTTP (cheaper than a ctl process): status and JSON body."""
    req = urllib.request.Request(
        f"http://{mgmt}{path}", method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=CTL_TIMEOUT) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    body = json.loads(raw)
    assert isinstance(body, dict), body
    return status, body


def routing_stats(mgmt: str) -> dict[str, object]:
    code, body = ctl(mgmt, "stats")
    assert code == 0, body
    routing = body["routing"]
    assert isinstance(routing, dict), body
    return routing


def register(lab: Lab, proxy: ProxyRun, user: str, callee: SippRun, q: str) -> SippRun:
    """REGISTER ``user``@127.0.0.1 at the proxy with a Contact on ``callee``'s port and ``q``."""
    reg = lab.uac(
        "lua_register.xml",
        proxy.address,
        keys={"contact_port": str(callee.port), "q": q},
        extra_args=["-s", user],
        name=f"reg-{callee.name}",
    )
    lab.expect_success(reg)
    return reg


def final_statuses(uac: SippRun, method: str = "INVITE") -> list[int]:
    return [
        m.status for m in uac.received() if m.method == method and m.status is not None and m.status >= 200
    ]


def line_of(text: str, fragment: str) -> int:
    """The 1-based number of the line of ``text`` holding ``fragment``."""
    for number, line in enumerate(text.splitlines(), 1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in the script")


_TRACE_SEPARATOR = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d[ \t]+\d\d:\d\d:\d\d\.\d+)\s*$", re.MULTILINE)


def message_times(run: SippRun) -> list[tuple[datetime, str, str]]:
    """When each message of a SIPp trace was sent or received: (time, "sent"/"received", first line)."""
    parts = _TRACE_SEPARATOR.split(run.message_file.read_text(errors="replace"))
    out = []
    for stamp, chunk in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln.strip() for ln in chunk.strip().splitlines() if ln.strip()]
        if len(lines) < 2 or " message " not in lines[0]:
            continue
        direction = "sent" if "message sent" in lines[0] else "received"
        out.append((datetime.fromisoformat(" ".join(stamp.split())), direction, lines[1]))
    return out


def first_time(run: SippRun, direction: str, first_line: str) -> datetime:
    """The time of the first message ``direction`` whose first line starts with ``first_line``."""
    for when, way, line in message_times(run):
        if way == direction and line.startswith(first_line):
            return when
    raise AssertionError(f"SIPp {run.name} {direction} no {first_line!r}\n{run.diagnostics()}")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a reload never reads a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- 1. the default script: registrar, location, forking by q ---------------------------------------------


def test_default_script_parallel_fork_to_equal_q_contacts(lab: Lab) -> None:
    """Two contacts of one user with equal q: both ring, one answers 200, the other gets CANCEL."""
    proxy, mgmt = start_proxy(lab)
    answer = lab.uas("uas_answer.xml", name="answer")
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    register(lab, proxy, "alice", answer, "1.0")
    register(lab, proxy, "alice", ringing, "1.0")
    code, regs = ctl(mgmt, "registrations", f"alice@{HOST}")
    bindings = regs.get(f"alice@{HOST}")
    assert code == 0 and isinstance(bindings, list) and len(bindings) == 2, regs
    assert {b["contact"].split(";")[0] for b in bindings} == {
        f"sip:alice@{u.address}" for u in (answer, ringing)
    }

    uac = lab.uac("uac_call.xml", proxy.address, extra_args=["-s", "alice"])
    lab.expect_success(uac, answer, ringing)

    assert len(answer.received("INVITE")) == 1 and len(ringing.received("INVITE")) == 1, lab.diagnostics()
    assert len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    assert answer.received("CANCEL") == []
    # The default script Record-Routes INVITEs: the ACK and BYE reach the callee through the proxy.
    assert len(answer.received("ACK")) == 1 and len(answer.received("BYE")) == 1, lab.diagnostics()
    assert answer.received("INVITE")[0].header("record-route"), lab.diagnostics()
    assert set(final_statuses(uac)) == {200}, lab.diagnostics()
    # Parallel: the second contact rang before the first one answered.
    assert first_time(ringing, "received", "INVITE") <= first_time(answer, "sent", "SIP/2.0 200"), (
        lab.diagnostics()
    )


def test_default_script_serial_fork_by_q_after_busy(lab: Lab) -> None:
    """q=1.0 answers 486, the failure route tries the q=0.5 contact, which answers 200."""
    proxy, _ = start_proxy(lab)
    busy = lab.uas("uas_reject.xml", name="busy", subst={"STATUS": "486", "REASON": "Busy Here"})
    answer = lab.uas("uas_answer.xml", name="answer")
    register(lab, proxy, "bob", busy, "1.0")
    register(lab, proxy, "bob", answer, "0.5")

    uac = lab.uac("uac_call.xml", proxy.address, extra_args=["-s", "bob"])
    lab.expect_success(uac, busy, answer)

    assert len(busy.received("INVITE")) == 1 and len(busy.received("ACK")) == 1, lab.diagnostics()
    assert len(answer.received("INVITE")) == 1, lab.diagnostics()
    # Serial, not parallel: the q=0.5 contact gets its INVITE only after the q=1.0 one answered 486.
    assert first_time(answer, "received", "INVITE") >= first_time(busy, "sent", "SIP/2.0 486"), (
        lab.diagnostics()
    )
    assert set(final_statuses(uac)) == {200}, lab.diagnostics()  # the 486 stays in the proxy
    assert len(answer.received("BYE")) == 1, lab.diagnostics()


def test_default_script_unknown_user_is_404(lab: Lab) -> None:
    """A call to a user with no registration is answered 404 by the location lookup."""
    proxy, _ = start_proxy(lab)
    uac = lab.uac("uac_failed.xml", proxy.address, subst={"FINAL": "404"}, extra_args=["-s", "nobody"])
    lab.expect_success(uac)
    assert set(final_statuses(uac)) == {404}, lab.diagnostics()


# -- 2. hot reload under load -----------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path under /tmp, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="tpl", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_hot_reload_under_load(short_dir: Path, lab: Lab) -> None:
    """~15 reloads during a steady load, two of them broken: no call fails, the broken ones are refused
    with their line, and the previous script keeps serving."""
    template = (SCRIPTS / "versioned.lua").read_text()
    # A short path: Lua cuts a long chunk name short ("...") in its syntax error messages.
    script = short_dir / "route.lua"

    def version(n: int) -> str:
        return template.replace("@VERSION@", f"v{n}")

    # Two broken versions: a syntax error, and a call of an unknown KSR function; each on a known line.
    good_line = 'KSR.hdr.append("X-Script-Version: " .. VERSION .. "\\r\\n")'
    syntax_error = version(90).replace(good_line, 'KSR.hdr.append("X-Script-Version: " .. VERSION ..)')
    unknown_function = version(91).replace("KSR.tm.t_relay()", "KSR.tm.t_relay_nowhere()")
    assert syntax_error != version(90) and unknown_function != version(91)
    broken = {
        4: (syntax_error, line_of(syntax_error, "VERSION ..)")),
        9: (unknown_function, line_of(unknown_function, "t_relay_nowhere")),
    }

    write_atomically(script, version(0))
    proxy, mgmt = start_proxy(lab, script)
    _, current = mgmt_http(mgmt, "GET", "/script")
    good_sha = [str(current["sha256"])]
    calls = LOAD_RATE * LOAD_SECONDS
    timeout = ["-timeout", str(LOAD_TIMEOUT)]
    callee = lab.uas("lua_load_uas.xml", name="callee", extra_args=["-m", str(calls), *timeout])
    load = lab.uac(
        "lua_load_uac.xml",
        callee.address,
        rsa=proxy.address,
        calls=calls,
        extra_args=["-r", str(LOAD_RATE), "-l", "1000", *timeout],
        name="load",
        wait=False,
    )

    good: list[str] = ["v0"]
    refused: list[dict[str, object]] = []
    n = 0
    deadline = time.monotonic() + LOAD_TIMEOUT
    while load.proc.poll() is None and n < MAX_RELOADS and time.monotonic() < deadline:
        time.sleep(RELOAD_EVERY)
        n += 1
        if n in broken:
            text, line = broken[n]
            write_atomically(script, text)
            code, answer = ctl(mgmt, "reload")  # the operator's way: exit status 1 and the JSON answer
            assert code == 1 and answer["ok"] is False, answer
            assert answer["line"] == line and Path(str(answer["file"])) == script, answer
            refused.append(answer)
            # The refused version is not active: the script in use is still the last good one.
            _, current = mgmt_http(mgmt, "GET", "/script")
            assert current["sha256"] == good_sha[-1], current
        else:
            write_atomically(script, version(n))
            status, answer = mgmt_http(mgmt, "POST", "/reload")
            assert status == 200 and answer["ok"] is True, answer
            good.append(f"v{n}")
            _, current = mgmt_http(mgmt, "GET", "/script")
            good_sha.append(str(current["sha256"]))

    try:
        load.wait(LOAD_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the load did not end in time\n{lab.diagnostics()}")
    lab.expect_success(load, callee)

    assert len(refused) == len(broken), (n, refused)
    assert n >= 10, f"only {n} reloads happened during the load"
    stats = routing_stats(mgmt)
    # Each refused version was refused at least once (the file watcher may have tried it as well).
    assert int(stats["reloads_failed"]) >= len(broken), stats  # type: ignore[call-overload]
    assert int(stats["reloads_ok"]) >= len(good), stats  # type: ignore[call-overload]
    assert stats["script_errors"] == 0, stats
    # Every INVITE went through a good version, and reloads took effect while the calls flowed.
    invites = callee.received("INVITE")
    assert len(invites) == calls, lab.diagnostics()
    seen = [m.header("x-script-version") for m in invites]
    assert set(seen) <= set(good), sorted(set(seen) - set(good))
    assert len(set(seen)) >= 3, sorted(set(seen))
    assert seen[-1] == good[-1], (seen[-1], good[-1])


# -- 3. a runaway route -----------------------------------------------------------------------------------


def test_runaway_route_is_cut_by_the_instruction_budget(lab: Lab) -> None:
    """``while true do end`` for user "loop": 500 for that call, overrun logged and counted, next call ok."""
    script = SCRIPTS / "runaway.lua"
    loop_line = line_of(script.read_text(), "while true do end")
    proxy, mgmt = start_proxy(lab, script)
    callee = lab.uas("uas_answer.xml", name="callee")

    looping = lab.uac(
        "uac_failed.xml",
        callee.address,
        rsa=proxy.address,
        subst={"FINAL": "500"},
        extra_args=["-s", "loop"],
        name="looping",
    )
    lab.expect_success(looping)
    assert set(final_statuses(looping)) == {500}, lab.diagnostics()
    # For the report, not asserted (no timed assertions on a shared machine): how soon the 500 came.
    waited = first_time(looping, "received", "SIP/2.0 500") - first_time(looping, "sent", "INVITE")
    print(f"runaway route: 500 received {waited.total_seconds() * 1000:.1f} ms after the INVITE")
    assert callee.received("INVITE") == []

    stats = routing_stats(mgmt)
    assert stats["budget_overruns"] == 1, stats
    assert int(stats["script_errors"]) >= 1, stats  # type: ignore[call-overload]
    log = proxy.log()
    assert f"{script.name}:{loop_line}" in log and "budget" in log, log

    after = lab.uac("uac_call.xml", callee.address, rsa=proxy.address, extra_args=["-s", "bob"], name="after")
    lab.expect_success(after, callee)
    assert set(final_statuses(after)) == {200}, lab.diagnostics()
    assert routing_stats(mgmt)["budget_overruns"] == 1
