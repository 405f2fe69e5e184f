"""End-to-end: ``KSR.rtpengine`` against a real rtpengine (Debian's ``rtpengine-daemon`` in user space).

The module starts one rtpengine on loopback (``--table=-1``: no kernel module; ``--config-file=none``: the
packaged file would choose other ports; ``--delete-delay=0``: a deleted call is gone at once), on an ng port
and an RTP port range of its own, and stops it by PID. A rtpengine running as a system service is left alone.
Each test starts ``trioproxy run --rtpengine udp:127.0.0.1:P`` with a route that calls ``rtpengine_manage``
in its request, reply and failure routes, then checks on the wire: the SDP the callee receives and the SDP
of the 200 the caller receives point at rtpengine (its address and a port of its range, where the peers
wrote 127.0.0.2/127.0.0.3 and ports 6000/7000); rtpengine's ``query``/``list`` show the call by its SIP
Call-ID while it lasts and no more after the BYE, or after a CANCEL.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Lab, SippRun, free_port, port_is_bound, stop_process
from trioproxy.rtpengine import RtpengineClient, parse_instance, summarize

pytestmark = pytest.mark.e2e

RTP_MIN, RTP_MAX = 20000, 20199  # below Linux's ephemeral range, where free_port() finds its ports
FLAGS = "replace-origin replace-session-connection ICE=remove RTP/AVP"

ROUTE = f"""
local FLAGS = "{FLAGS}"
function ksr_request_route()
  if not KSR.rtpengine then
    KSR.sl.sl_send_reply(500, "No Media Relay")
    return
  end
  if KSR.siputils.has_totag() > 0 then
    KSR.rr.loose_route()
    KSR.rtpengine.rtpengine_manage(FLAGS)
    KSR.tm.t_relay()
    return
  end
  KSR.rr.record_route()
  KSR.rtpengine.rtpengine_manage(FLAGS)
  KSR.tm.t_on_reply("media_reply")
  KSR.tm.t_on_failure("media_failure")
  KSR.tm.t_relay()
end

function media_reply()
  KSR.rtpengine.rtpengine_manage(FLAGS)
end

function media_failure()
  KSR.rtpengine.rtpengine_manage("")
end
"""

_SEPARATOR = re.compile(r"^-{20,} .*$", re.MULTILINE)


def _bodies(run: SippRun, direction: str, first_line: str) -> list[str]:
    """Bodies of the messages ``run`` logged as ``direction`` whose first line starts with ``first_line``."""
    out = []
    for chunk in _SEPARATOR.split(run.message_file.read_text(errors="replace")):
        lines = chunk.strip("\r\n").splitlines()
        if not lines or f"message {direction}" not in lines[0]:
            continue
        text = "\n".join(ln.rstrip("\r") for ln in lines[1:]).strip("\n")
        head, _sep, body = text.partition("\n\n")
        if head.startswith(first_line):
            out.append(body)
    return out


class Rtpengine:
    """One rtpengine process on loopback, stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        log = open(workdir / f"rtpengine-{self.port}.log", "wb")
        self.log_path = Path(log.name)
        args = [
            "rtpengine", "--foreground", "--log-stderr", "--table=-1", "--config-file=none",
            "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{self.port}",
            f"--port-min={RTP_MIN}", f"--port-max={RTP_MAX}", "--delete-delay=0",
            f"--pidfile={workdir / f'rtpengine-{self.port}.pid'}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while not port_is_bound(self.port, "udp"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_process(self.proc)
                pytest.fail(f"rtpengine did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    @property
    def spec(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def ng(self, command: str, **params: Any) -> dict[str, Any]:
        """Send an ng command from the test itself (not through the proxy)."""
        client = RtpengineClient([parse_instance(self.spec)], timeout=0.5, retries=3)
        return trio.run(client.command, command, params)

    def calls(self) -> list[str]:
        reply = self.ng("list", limit=100)
        assert reply.get("result") == "ok", reply
        return list(reply["calls"])


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rtpengine]:
    engine = Rtpengine(tmp_path_factory.mktemp("rtpengine"))
    try:
        yield engine
    finally:
        stop_process(engine.proc)


def _script(lab: Lab) -> str:
    path = lab.workdir / "media.lua"
    path.write_text(ROUTE)
    return str(path)


def _cid(call_id: str) -> list[str]:
    """SIPp arguments making the (one) call's Call-ID ``call_id``: SIPp matches replies by its own Call-ID."""
    assert call_id.endswith("-1")
    return ["-cid_str", call_id[: -len("-1")] + "-%u"]


def _assert_relayed(sdp: str, original_port: int) -> None:
    s = summarize(sdp)
    assert s.connection == "127.0.0.1", sdp  # c= rewritten (the peer wrote 127.0.0.2 / 127.0.0.3)
    assert s.origin == "127.0.0.1", sdp  # replace-origin
    assert s.media and s.media[0].port != original_port and RTP_MIN <= s.media[0].port <= RTP_MAX, sdp
    assert "a=candidate" not in sdp


def _wait_gone(engine: Rtpengine, call_id: str) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if call_id not in engine.calls():
            return True
        time.sleep(0.05)
    return False


def test_call_media_through_rtpengine(lab: Lab, rtpengine: Rtpengine) -> None:
    proxy = lab.proxy(script=_script(lab), extra_args=["--rtpengine", rtpengine.spec])
    callee = lab.uas("rtp_uas_answer.xml", name="callee")
    call_id = f"rtp-{uuid.uuid4().hex}-1"
    caller = lab.uac(
        "rtp_uac_call.xml", callee.address, rsa=proxy.address, extra_args=_cid(call_id), wait=False
    )
    # During the call (2 s between ACK and BYE) rtpengine knows it by the SIP Call-ID and both tags.
    deadline = time.monotonic() + 10
    while call_id not in rtpengine.calls() and time.monotonic() < deadline and caller.proc.poll() is None:
        time.sleep(0.05)
    assert call_id in rtpengine.calls(), lab.diagnostics()
    deadline = time.monotonic() + 3
    while True:
        query = rtpengine.ng("query", **{"call-id": call_id})
        if len(query.get("tags", {})) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert query["result"] == "ok" and len(query["tags"]) == 2, query
    lab.expect_success(caller, callee)

    offers = _bodies(callee, "received", "INVITE")
    assert offers, lab.diagnostics()
    _assert_relayed(offers[0], 6000)
    answers = _bodies(caller, "received", "SIP/2.0 200")
    assert answers, lab.diagnostics()
    _assert_relayed(answers[0], 7000)
    assert _wait_gone(rtpengine, call_id), "the BYE did not delete the call"


def test_cancelled_call_deletes_session(lab: Lab, rtpengine: Rtpengine) -> None:
    proxy = lab.proxy(script=_script(lab), extra_args=["--rtpengine", rtpengine.spec])
    callee = lab.uas("uas_ring_cancel.xml", name="callee")
    call_id = f"rtp-{uuid.uuid4().hex}-1"
    caller = lab.uac(
        "rtp_uac_cancel.xml", callee.address, rsa=proxy.address, extra_args=_cid(call_id), wait=False
    )
    deadline = time.monotonic() + 10
    while call_id not in rtpengine.calls() and time.monotonic() < deadline and caller.proc.poll() is None:
        time.sleep(0.05)
    assert call_id in rtpengine.calls(), lab.diagnostics()  # the offer made a session while it rang
    lab.expect_success(caller, callee)
    _assert_relayed(_bodies(callee, "received", "INVITE")[0], 6000)
    assert _wait_gone(rtpengine, call_id), f"the CANCEL did not delete the call\n{lab.diagnostics()}"


def test_failover_to_second_instance(lab: Lab, rtpengine: Rtpengine) -> None:
    dead = f"udp:127.0.0.1:{free_port()}"  # nothing listens there
    instances = [parse_instance(dead), parse_instance(rtpengine.spec)]
    # A Call-ID whose first choice (by weighted hash) is the dead instance, so the failover is exercised.
    picker = RtpengineClient(instances)
    call_id = next(
        cid
        for cid in (f"rtp-failover-{uuid.uuid4().hex}-1" for _ in range(200))
        if picker.candidates(cid, 0.0)[0] is instances[0]
    )
    settings = {"rtpengine": {"timeout": 0.2, "retries": 1}}
    proxy = lab.proxy(
        script=_script(lab),
        settings=settings,
        extra_args=["--rtpengine", dead, "--rtpengine", rtpengine.spec],
    )
    callee = lab.uas("rtp_uas_answer.xml", name="callee")
    caller = lab.uac("rtp_uac_call.xml", callee.address, rsa=proxy.address, extra_args=_cid(call_id))
    lab.expect_success(caller, callee)
    _assert_relayed(_bodies(callee, "received", "INVITE")[0], 6000)
    _assert_relayed(_bodies(caller, "received", "SIP/2.0 200")[0], 7000)
    assert f"rtpengine {dead}=1 did not answer" in proxy.log(), proxy.log()
    assert _wait_gone(rtpengine, call_id)
