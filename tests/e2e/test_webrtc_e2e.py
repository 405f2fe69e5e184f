"""Browser phones (WebRTC) and plain SIP phones on UDP, with rtpengine bridging their media.

One proxy runs ``examples/routes/webrtc.lua`` as the README shows it (UDP, WS and WSS listeners, a trustme
certificate, ``--rtpengine``), with one real rtpengine on loopback (``test_rtpengine_e2e.Rtpengine``). Headless
Chromium runs two JsSIP pages (``browser/webrtc_driver.mjs`` with ``browser/phone.js``): alice registers over
WSS, bob over WS, and carol, a SIPp phone on UDP, registers too. Then
  (a) alice calls bob (browser to browser, through rtpengine),
  (b) alice calls carol (SIPp with ``-rtp_echo``: rtpengine turns the browser's SRTP into plain RTP and back),
  (c) a SIPp phone on UDP calls alice with an RTP/AVP offer and plays SIPp's G.711 recording; alice answers,
and alice hangs up each call. Pass means, for each call: it was confirmed; the browser's
``RTCPeerConnection.getStats()`` shows inbound RTP packets growing; rtpengine's ``list``/``query`` show the one
session with packets from both sides while it lasts; the hang-up deletes it; the UDP phone saw plain RTP/AVP
SDP (no ICE, no DTLS) pointing at rtpengine.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.e2e.test_rtpengine_e2e import RTP_MAX, RTP_MIN, Rtpengine, _bodies

from .conftest import HOST, Lab, ProxyRun, free_port, port_is_bound, stop_process
from .websocket_lab import BROWSER_DIR, driver_command, ws_proxy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "routes" / "webrtc.lua"
PCAP = Path("/usr/share/sip-tester/g711a.pcap")  # Debian's sip-tester (SIPp) ships it
STEP_TIMEOUT = 30.0  # seconds between two driver lines (the driver bounds each of its steps at 15)


@dataclass
class WebrtcLab:
    lab: Lab
    proxy: ProxyRun
    engine: Rtpengine
    ws_port: int
    wss_port: int


@pytest.fixture(scope="module")
def webrtc_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebrtcLab]:
    workdir = tmp_path_factory.mktemp("webrtc")
    engine = Rtpengine(workdir)
    try:
        with ws_proxy(workdir, script=str(EXAMPLE), extra_args=["--rtpengine", engine.spec]) as ws:
            yield WebrtcLab(ws.lab, ws.proxy, engine, ws.ws_port, ws.wss_port)
    finally:
        stop_process(engine.proc)


class Driver:
    """``webrtc_driver.mjs`` in a child process: its JSON lines in a queue, our answers on its stdin."""

    def __init__(self, wlab: WebrtcLab, workdir: Path) -> None:
        self.stderr_path = workdir / "driver.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                driver_command("webrtc_driver.mjs", wlab.ws_port, wlab.wss_port),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=BROWSER_DIR,
            )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def context(self) -> str:
        return (
            f"driver lines: {json.dumps(self.seen)}\n--- driver stderr\n"
            + self.stderr_path.read_text(errors="replace")[-3000:]
        )

    def expect(self, checkpoint: str) -> dict[str, Any]:
        """The next line, which must be ``checkpoint`` (bounded wait)."""
        try:
            line = self.lines.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no {checkpoint!r} from the driver within {STEP_TIMEOUT} s\n{self.context()}")
        assert line is not None, f"the driver ended before {checkpoint!r}\n{self.context()}"
        self.seen.append(line)
        with open(self.stderr_path.with_name("driver.lines"), "a") as f:
            f.write(json.dumps(line) + "\n")
        assert line.get("checkpoint") == checkpoint, f"expected {checkpoint!r}\n{self.context()}"
        return line

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        line = self.lines.get(timeout=STEP_TIMEOUT)
        assert line is not None and "checkpoint" not in line, self.context()
        self.seen.append(line)
        self.proc.wait(timeout=STEP_TIMEOUT)
        return line

    def close(self) -> None:
        stop_process(self.proc)


def _packets_by_tag(engine: Rtpengine, call_id: str) -> dict[str, int]:
    """RTP packets rtpengine received from each side (by SIP tag) of the call (its ng ``query``)."""
    reply = engine.ng("query", **{"call-id": call_id})
    assert reply.get("result") == "ok", reply
    out = {}
    for tag, info in reply.get("tags", {}).items():
        streams = [s for m in info.get("medias", []) for s in m.get("streams", [])]
        out[tag] = sum(int(s.get("stats", {}).get("packets", 0)) for s in streams)
    return out


def _one_session_with_media(engine: Rtpengine, context: str) -> tuple[str, dict[str, int]]:
    """The one call rtpengine knows, once both of its sides have sent packets (bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        calls = engine.calls()
        assert len(calls) == 1, f"rtpengine sessions: {calls}\n{context}"
        packets = _packets_by_tag(engine, calls[0])
        if (len(packets) == 2 and min(packets.values()) > 0) or time.monotonic() > deadline:
            return calls[0], packets
        time.sleep(0.2)


def _no_session(engine: Rtpengine) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not engine.calls():
            return True
        time.sleep(0.05)
    return False


def _assert_plain_rtp(sdp: str) -> None:
    """What a plain SIP phone must get: RTP/AVP on rtpengine's address and port range, no ICE, no DTLS."""
    assert "c=IN IP4 127.0.0.1" in sdp, sdp
    m_lines = [ln for ln in sdp.splitlines() if ln.startswith("m=audio ")]
    assert len(m_lines) == 1, sdp
    port, proto = m_lines[0].split()[1:3]
    assert proto == "RTP/AVP" and RTP_MIN <= int(port) <= RTP_MAX, sdp
    for webrtc_only in ("a=candidate", "a=ice-ufrag", "a=fingerprint", "a=setup"):
        assert webrtc_only not in sdp, sdp


def _growing(packets: dict[str, list[int]], context: str) -> None:
    for name, (first, second) in packets.items():
        assert 0 < first < second, f"{name}: inbound RTP {first} then {second}\n{context}"


def test_browsers_and_udp_phones_call_through_rtpengine(webrtc_lab: WebrtcLab) -> None:
    lab, proxy, engine = webrtc_lab.lab, webrtc_lab.proxy, webrtc_lab.engine
    assert PCAP.exists(), f"{PCAP} is missing (Debian's sip-tester ships it)"
    driver = Driver(webrtc_lab, lab.workdir)
    try:

        def context() -> str:
            return (
                f"{driver.context()}\n{lab.diagnostics()}\n--- rtpengine\n"
                + engine.log_path.read_text(errors="replace")[-3000:]
            )

        driver.expect("registered")
        # carol: a plain SIP phone on UDP (SIPp echoing RTP), registered through the proxy.
        carol = lab.uas(
            "webrtc_uas_echo.xml",
            name="carol",
            extra_args=["-rtp_echo", "-mi", HOST, "-mp", str(free_port())],
        )
        reg = lab.uac(
            "reg_register.xml",
            proxy.address,
            name="carol_reg",
            keys={"contact": f"sip:carol@{carol.address}", "contact_params": "", "expires": "300"},
            extra_args=["-s", "carol"],
        )
        lab.expect_success(reg)
        driver.go()

        # (a) browser to browser: both pages hear each other, rtpengine relays both sides.
        up = driver.expect("browser_up")
        _growing(up["packets"], context())
        _call, packets = _one_session_with_media(engine, context())
        assert len(packets) == 2 and min(packets.values()) > 0, (packets, context())
        driver.go()
        driver.expect("browser_down")
        assert _no_session(engine), f"alice's BYE to bob did not delete the session\n{context()}"
        driver.go()

        # (b) browser to the UDP phone: the browser hears carol's echo of its own audio.
        up = driver.expect("to_udp_up")
        _growing(up["packets"], context())
        _call, packets = _one_session_with_media(engine, context())
        assert len(packets) == 2 and min(packets.values()) > 0, (packets, context())
        driver.go()
        driver.expect("to_udp_down")
        lab.expect_success(carol)  # carol got the INVITE, answered, got the ACK and the BYE
        assert _no_session(engine), f"alice's BYE to carol did not delete the session\n{context()}"
        offers = _bodies(carol, "received", "INVITE")
        assert offers, context()
        _assert_plain_rtp(offers[0])
        driver.go()

        # (c) the UDP phone calls the browser: the browser hears the phone's recording.
        driver.expect("from_udp_ready")
        phone = lab.uac(
            "webrtc_uac_pcap.xml",
            proxy.address,
            name="phone",
            extra_args=["-s", "alice", "-mi", HOST, "-mp", str(free_port())],
            subst={"PCAP": str(PCAP)},
            wait=False,
        )
        driver.go()
        up = driver.expect("from_udp_up")
        _growing(up["packets"], context())
        _call, packets = _one_session_with_media(engine, context())
        assert len(packets) == 2 and min(packets.values()) > 0, (packets, context())
        driver.go()
        driver.expect("from_udp_down")
        lab.expect_success(phone)  # answered, ACKed, and the browser's BYE reached the phone
        assert _no_session(engine), f"alice's BYE to the UDP phone did not delete the session\n{context()}"
        answers = _bodies(phone, "received", "SIP/2.0 200")
        assert answers, context()
        _assert_plain_rtp(answers[0])
        driver.go()

        result = driver.result()
        assert result["error"] is None, context()
        assert result["registered"] == {"alice": 200, "bob": 200}, context()
        calls = result["calls"]
        assert calls["browser"]["confirmed"] == {"alice": True, "bob": True}, context()
        assert calls["browser"]["ended"] == {"alice": "Terminated", "bob": "Terminated"}, context()
        for name in ("to_udp", "from_udp"):
            assert calls[name]["confirmed"] == {"alice": True}, context()
            assert calls[name]["ended"] == {"alice": "Terminated"}, context()
        lines = proxy.transaction_lines()
        assert sum(1 for ln in lines if ln.startswith("REGISTER ") and "status=200" in ln) >= 3, context()
        for target in ("bob", "carol", "alice"):
            assert any(ln.startswith(f"INVITE sip:{target}@") and "status=200" in ln for ln in lines), (
                target,
                context(),
            )
    finally:
        driver.close()


def _cid(call_id: str) -> list[str]:
    """SIPp arguments making the (one) call's Call-ID ``call_id``."""
    assert call_id.endswith("-1")
    return ["-cid_str", call_id[: -len("-1")] + "-%u"]


def test_nat_example_fixes_signalling_and_relays_media(webrtc_lab: WebrtcLab) -> None:
    """``examples/routes/nat.lua``: a caller and a callee whose Contacts and SDP name private addresses."""
    lab, engine = webrtc_lab.lab, webrtc_lab.engine
    proxy = lab.proxy(
        script=str(ROOT / "examples" / "routes" / "nat.lua"), extra_args=["--rtpengine", engine.spec]
    )
    # The callee registers from its "public" port with a private Contact, then answers on that same port.
    public = free_port()
    reg = lab._sipp(
        "reg_register.xml", name="callee_reg", port=public, transport="udp", remote=proxy.address, rsa=None,
        calls=1, keys={"contact": "sip:callee@10.0.0.3:5060", "contact_params": "", "expires": "300"},
        extra_args=["-s", "callee"],
    )  # fmt: skip
    lab.expect_success(reg)
    callee = lab._sipp(
        "rtp_uas_answer.xml", name="callee", port=public, transport="udp", remote=None, rsa=None, calls=1,
        keys={}, extra_args=[],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not port_is_bound(public, "udp") and time.monotonic() < deadline and callee.proc.poll() is None:
        time.sleep(0.02)
    call_id = f"nat-{uuid.uuid4().hex}-1"
    caller = lab.uac(
        "nat_uac_call.xml",
        proxy.address,
        name="caller",
        extra_args=["-s", "callee", *_cid(call_id)],
        wait=False,
    )
    deadline = time.monotonic() + 10
    query: dict[str, Any] = {}
    while time.monotonic() < deadline and caller.proc.poll() is None:
        query = engine.ng("query", **{"call-id": call_id})
        if query.get("result") == "ok" and len(query.get("tags", {})) == 2:
            break
        time.sleep(0.1)
    assert len(query.get("tags", {})) == 2, f"{query}\n{lab.diagnostics()}"
    lab.expect_success(caller, callee)
    # rtpengine sends the caller's media to where its SIP came from, not to the private c= (SIP-source-address).
    endpoints = [
        s.get("endpoint", {}).get("address")
        for info in query["tags"].values()
        for m in info.get("medias", [])
        for s in m.get("streams", [])
    ]
    assert "10.0.0.2" not in endpoints and "127.0.0.1" in endpoints, query
    # The callee got the INVITE at the address it registered from, with the caller's Contact aliased to the
    # caller's real address, and SDP pointing at rtpengine instead of 10.0.0.2.
    invite = callee.received("INVITE")[0]
    assert f"alias=127.0.0.1~{caller.port}~1" in invite.header("Contact"), invite
    offer = _bodies(callee, "received", "INVITE")[0]
    assert "10.0.0.2" not in offer and "c=IN IP4 127.0.0.1" in offer, offer
    answer = _bodies(caller, "received", "SIP/2.0 200")[0]
    assert "127.0.0.3" not in answer and "c=IN IP4 127.0.0.1" in answer, answer
    # The caller's BYE reached the callee (SIPp exit 0) and deleted the session.
    assert _no_session(engine), f"the BYE did not delete the session\n{lab.diagnostics()}"
