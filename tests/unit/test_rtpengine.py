"""rtpengine ng control, sans I/O and against a fake ng responder on loopback: bencoding, Kamailio flag
strings as ng keys, SDP helpers, the client's retransmission, failover and stickiness, and the presence of
``KSR.rtpengine`` only when configured."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.routing import LuaScript, check_script
from trioproxy.rtpengine import (
    NgError,
    RtpengineClient,
    decode_message,
    encode_message,
    parse_flags,
    parse_instance,
    summarize,
)
from trioproxy.rtpengine.bencode import BencodeError, bdecode, bencode

values = st.recursive(
    st.binary(max_size=20) | st.integers(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_bencode_round_trip(value: Any) -> None:
    assert bdecode(bencode(value)) == value


def test_bencode_known_bytes() -> None:
    assert bencode({b"sdp": b"v=0", b"command": b"offer", b"n": -3, b"l": [1, b"x"]}) == (
        b"d7:command5:offer1:lli1e1:xe1:ni-3e3:sdp3:v=0e"
    )
    # rtpengine writes its keys unsorted: accepted.
    assert bdecode(b"d6:result2:ok3:sdp1:xe") == {b"result": b"ok", b"sdp": b"x"}
    assert bdecode(b"d3:sdp1:x6:result2:oke") == {b"result": b"ok", b"sdp": b"x"}


@pytest.mark.parametrize(
    "bad", [b"", b"i01e", b"i-0e", b"ie", b"5:abc", b"l", b"d1:ai1e1:ai2ee", b"i1ei2e", b"x", b"di1ei1ee",
            b"l" * 100 + b"e" * 100, b"3x:abc"],
)  # fmt: skip
def test_bdecode_refuses(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(bad)


def test_ng_message_round_trip() -> None:
    data = encode_message("c00kie", {"command": "offer", "sdp": "v=0\r\n\xe9", "flags": ["trust-address"]})
    assert data.startswith(b"c00kie d")
    cookie, body = decode_message(data)
    assert cookie == "c00kie" and body == {
        "command": "offer",
        "sdp": "v=0\r\n\xe9",
        "flags": ["trust-address"],
    }
    with pytest.raises(NgError):
        decode_message(b"nocookie")
    with pytest.raises(NgError):
        decode_message(b"c li1ee")  # not a dictionary


def test_kamailio_flags_to_ng_keys() -> None:
    parsed = parse_flags(
        "trust-address replace-origin replace-session-connection ICE=force RTP/SAVPF DTLS=passive "
        "direction=internal direction=external SDES-off rtcp-mux-demux codec-strip-PCMA codec-offer-opus "
        "address-family=IP6 delete-delay=0 call-id=X from-tag=F to-tag=T"
    )
    assert parsed.ng == {
        "flags": ["trust-address"],
        "replace": ["origin", "session-connection"],
        "ICE": "force",
        "transport-protocol": "RTP/SAVPF",
        "DTLS": "passive",
        "direction": ["internal", "external"],
        "SDES": ["off"],
        "rtcp-mux": ["demux"],
        "codec": {"strip": ["PCMA"], "offer": ["opus"]},
        "address-family": "IP6",
        "delete-delay": 0,
    }
    assert (parsed.call_id, parsed.from_tag, parsed.to_tag) == ("X", "F", "T")
    assert parse_flags("ICE=remove RTP/AVP").ng == {"ICE": "remove", "transport-protocol": "RTP/AVP"}
    assert parse_flags("").ng == {}
    with pytest.raises(NgError):
        parse_flags("=x")


def test_sdp_summary() -> None:
    s = summarize(
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\nm=video 5000/2 RTP/AVPF 96\r\nc=IN IP4 10.0.0.3\r\n"
    )
    assert (s.origin, s.connection) == ("10.0.0.1", "10.0.0.2")
    assert [(m.kind, m.port, m.proto) for m in s.media] == [
        ("audio", 4000, "RTP/AVP"),
        ("video", 5000, "RTP/AVPF"),
    ]
    assert s.media_address(0) == "10.0.0.2" and s.media_address(1) == "10.0.0.3"


def test_parse_instance() -> None:
    inst = parse_instance("udp:127.0.0.1:2223=3")
    assert (inst.host, inst.port, inst.weight) == ("127.0.0.1", 2223, 3)
    assert parse_instance("udp:[::1]:2223").host == "::1"
    for bad in ("tcp:127.0.0.1:1", "udp:127.0.0.1", "udp:127.0.0.1:0", "udp:127.0.0.1:5=0", "udp:name:5"):
        with pytest.raises(ValueError):
            parse_instance(bad)


# -- the client against fake responders ------------------------------------------------------------------


class FakeNg:
    """A loopback ng responder that answers after ``drop`` datagrams were ignored (0: at once)."""

    def __init__(self, drop: int = 0) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.drop = drop
        self.received: list[dict[str, Any]] = []

    async def bind(self) -> str:
        await self.sock.bind(("127.0.0.1", 0))
        return f"udp:127.0.0.1:{self.sock.getsockname()[1]}"

    async def serve(self) -> None:
        while True:
            data, peer = await self.sock.recvfrom(65535)
            cookie, body = decode_message(data)
            self.received.append(body)
            if self.drop > 0:
                self.drop -= 1
                continue
            await self.sock.sendto(encode_message("other", {"result": "ok"}), peer)  # a wrong cookie: ignored
            await self.sock.sendto(
                encode_message(cookie, {"result": "ok", "sdp": "v=0 " + body["command"]}), peer
            )


async def test_client_retransmits_and_matches_cookie() -> None:
    fake = FakeNg(drop=1)
    spec = await fake.bind()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve)
        client = RtpengineClient([parse_instance(spec)], timeout=0.1, retries=2)
        reply = await client.command("offer", {"call-id": "c1", "from-tag": "f", "sdp": "v=0"})
        assert reply == {"result": "ok", "sdp": "v=0 offer"}
        assert len(fake.received) == 2  # the first went unanswered, the retransmission was answered
        assert (
            fake.received[0]
            == fake.received[1]
            == {"command": "offer", "call-id": "c1", "from-tag": "f", "sdp": "v=0"}
        )
        nursery.cancel_scope.cancel()
    fake.sock.close()


async def test_client_failover_disables_dead_instance_and_sticks_to_live() -> None:
    live = FakeNg()
    dead = FakeNg(drop=10**6)  # receives, never answers
    live_spec, dead_spec = await live.bind(), await dead.bind()
    instances = [parse_instance(dead_spec), parse_instance(live_spec)]
    client = RtpengineClient(instances, timeout=0.05, retries=1, disable_time=30)
    call_id = next(
        c for c in (f"call-{n}" for n in range(1000)) if client.candidates(c, 0.0)[0] is instances[0]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(live.serve)
        nursery.start_soon(dead.serve)
        start = trio.current_time()
        reply = await client.command("offer", {"call-id": call_id, "from-tag": "f", "sdp": "v=0"})
        assert reply["result"] == "ok" and len(dead.received) == 2 and len(live.received) == 1
        assert trio.current_time() - start >= 0.1  # two attempts of 0.05 s on the dead one
        assert client.instance_of(call_id) is instances[1]
        assert instances[0].disabled_until > trio.current_time() + 29
        # The disabled instance is left out; the call's answer and delete go to where its offer went.
        await client.command("answer", {"call-id": call_id, "from-tag": "f", "to-tag": "t", "sdp": "v=0"})
        await client.command("delete", {"call-id": call_id, "from-tag": "f"})
        assert len(dead.received) == 2 and [r["command"] for r in live.received] == [
            "offer",
            "answer",
            "delete",
        ]
        assert client.instance_of(call_id) is None
        nursery.cancel_scope.cancel()
    live.sock.close()
    dead.sock.close()


async def test_client_no_instance_answers() -> None:
    from trioproxy.rtpengine import NoInstance

    dead = FakeNg(drop=10**6)
    spec = await dead.bind()
    client = RtpengineClient([parse_instance(spec)], timeout=0.05, retries=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dead.serve)
        with pytest.raises(NoInstance):
            await client.command("query", {"call-id": "x"})
        nursery.cancel_scope.cancel()
    dead.sock.close()


# -- KSR.rtpengine is present only when configured -------------------------------------------------------

GUARDED = """
function ksr_request_route()
  if KSR.rtpengine then
    KSR.rtpengine.rtpengine_manage("replace-origin")
  end
  KSR.tm.t_relay()
end
"""


def test_module_absent_without_rtpengine_and_check_says_so(tmp_path: Any) -> None:
    path = tmp_path / "r.lua"
    path.write_text(GUARDED)
    result = check_script(path)
    assert result.ok and any("KSR.rtpengine is not provided" in w for w in result.warnings)
    present = check_script(path, modules=frozenset({"rtpengine"}))
    assert present.ok and not present.warnings
    with pytest.raises(Exception, match=r"unknown function KSR\.rtpengine\.rtpengine_manag"):
        LuaScript.load(GUARDED.replace("manage", "manag"), name="x.lua", modules=frozenset({"rtpengine"}))


INVITE = (
    b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=ft\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: cid-1\r\nCSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0"
)


class _Services:
    async def trying(self, state: Any) -> None:
        return None


async def test_ksr_handlers_rewrite_sdp_and_query_into_var() -> None:
    from trioproxy.routing.ksr_rtpengine import RTPENGINE_HANDLERS, use_rtpengine
    from trioproxy.routing.state import RequestState
    from trioproxy.sip import Request, parse_message_untrusted

    fake = FakeNg()
    spec = await fake.bind()
    msg = parse_message_untrusted(INVITE)
    assert isinstance(msg, Request)
    state = RequestState(msg=msg)
    services: Any = _Services()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve)
        with use_rtpengine(RtpengineClient([parse_instance(spec)], timeout=0.2)):
            rc = await RTPENGINE_HANDLERS["rtpengine_manage"](state, services, ("replace-origin ICE=remove",))
            assert rc == 1 and msg.body == b"v=0 offer" and b"Content-Length: 9" in msg.to_bytes()
            assert fake.received[-1]["replace"] == ["origin"] and fake.received[-1]["call-id"] == "cid-1"
            assert fake.received[-1]["from-tag"] == "ft" and "to-tag" not in fake.received[-1]
            # An answer needs a To tag: nothing is sent without one.
            assert await RTPENGINE_HANDLERS["rtpengine_answer"](state, services, ("",)) == -1
            assert len(fake.received) == 1
            rc = await RTPENGINE_HANDLERS["rtpengine_query_v"](state, services, ("j", "$var(q)"))
            assert (
                rc == 1
                and '"result": "ok"' in str(state.vars["q"])
                and fake.received[-1]["command"] == "query"
            )
        nursery.cancel_scope.cancel()
    fake.sock.close()
