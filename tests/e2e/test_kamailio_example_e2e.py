"""Kamailio's own KEMI example, run unchanged: ``trioproxy run --script
/usr/share/doc/kamailio/examples/kemi/kamailio-basic-kemi-lua.lua --db sqlite:///...`` between SIPp peers.

The script is read from Debian's ``kamailio`` package (``scripts/test`` installs it), never copied. The
configuration declares what the script needs and Kamailio would get from its kamailio.cfg: the ``ipban``
hash table and pike's thresholds (``[pike] enabled`` stays off: the script calls ``pike_check_req`` itself,
for sources that are not the proxy's own addresses). Subscribers come from ``trioproxy user add``; the
realm is the From domain, the proxy's own address 127.0.0.1, which ``is_myself_furi``/``is_myself_ruri``
recognise. One proxy serves the whole module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from . import udp_peer
from .conftest import HOST, Lab, ProxyRun, SippRun

pytestmark = pytest.mark.e2e

EXAMPLE = Path("/usr/share/doc/kamailio/examples/kemi/kamailio-basic-kemi-lua.lua")
DENSITY = 12  # pike: requests per sampling unit (1 s) from one source before it is blocked
BLOCK_TIME = 1.5  # pike's own block; the script's "ipban" entry outlives it
IPBAN_EXPIRES = 60


def _user(db_url: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "trioproxy", "user", *args[:1], "--db", db_url, *args[1:]],
                   check=True, capture_output=True, timeout=30)  # fmt: skip


@pytest.fixture(scope="module")
def kx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, ProxyRun]]:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing: install Debian's kamailio package (scripts/test does)"
    workdir = tmp_path_factory.mktemp("kamailio_example")
    db_url = f"sqlite:///{workdir / 'operator.db'}"
    for user in ("alice", "bob", "carol"):
        _user(db_url, "add", f"{user}@{HOST}", f"{user}-pw")
    lab = Lab(workdir)
    try:
        settings = {
            # SIPp 3.6 answers the first challenge and knows only MD5.
            "auth": {"algorithms": ["MD5"]},
            # Kamailio's port-less alias: sip:alice@127.0.0.1 (port 5060) is ours too, whatever our port.
            "proxy": {"domains": [HOST]},
            "pike": {"sampling_time_unit": 1.0, "reqs_density_per_unit": DENSITY, "block_time": BLOCK_TIME},
            "htable.ipban": {"autoexpire": IPBAN_EXPIRES},
        }
        proxy = lab.proxy(script=str(EXAMPLE), settings=cast(Any, settings), extra_args=["--db", db_url])
        yield lab, proxy
    finally:
        lab.close()


def _register(
    lab: Lab,
    proxy: ProxyRun,
    user: str,
    password: str,
    final: int,
    name: str,
    *,
    contact: str,
    source: str = HOST,
) -> SippRun:
    run = lab.uac(
        "auth_register.xml", proxy.address, name=name, keys={"contact": contact},
        # A later -i wins: the REGISTER leaves from ``source``.
        extra_args=["-s", user, "-au", user, "-ap", password, "-i", source], subst={"FINAL": str(final)},
    )  # fmt: skip
    lab.expect_success(run)
    return run


def _via_hosts(value: str) -> str:
    return value.split()[1].split(";")[0]


def test_users_register_with_digest_and_call_each_other(kx: tuple[Lab, ProxyRun]) -> None:
    lab, proxy = kx
    assert "kamailio-basic-kemi-lua.lua" in proxy.log()
    callee = lab.uas("uas_answer.xml", name="bob_phone")
    reg_bob = _register(lab, proxy, "bob", "bob-pw", 200, "reg_bob", contact=f"sip:bob@{callee.address}")
    # From 127.0.0.2, not one of the proxy's addresses: the script runs its ipban and pike checks for it.
    reg_alice = _register(
        lab,
        proxy,
        "alice",
        "alice-pw",
        200,
        "reg_alice",
        contact="sip:alice@127.0.0.2:5999",
        source="127.0.0.2",
    )
    for reg in (reg_bob, reg_alice):
        [challenge] = reg.received(status=401)
        assert f'realm="{HOST}"' in challenge.header("www-authenticate"), challenge
        [ok] = reg.received(status=200)
        assert "expires=" in ok.header("contact").lower(), ok
    # force_rport(): the reply to 127.0.0.2 went back to its source port, and the Via says so.
    [ok] = reg_alice.received(status=200)
    assert "received=127.0.0.2" in ok.header("via") and "rport=" in ok.header("via"), ok

    caller = lab.uac(
        "auth_call.xml", proxy.address, name="alice_calls",
        keys={"caller": "alice"}, extra_args=["-s", "bob", "-au", "alice", "-ap", "alice-pw"],
    )  # fmt: skip
    lab.expect_success(caller, callee)
    [challenge] = caller.received(status=407)
    assert f'realm="{HOST}"' in challenge.header("proxy-authenticate"), challenge
    [ok, bye_ok] = caller.received(status=200)
    assert (ok.method, bye_ok.method) == ("INVITE", "BYE")
    assert ok.header("record-route") == f"<sip:{proxy.address};lr>", ok

    [invite] = callee.received("INVITE")
    assert invite.first_line == f"INVITE sip:bob@{callee.address} SIP/2.0"  # the registered contact
    assert _via_hosts(invite.header("via")) == proxy.address
    assert invite.header("record-route") == f"<sip:{proxy.address};lr>"
    assert invite.header("max-forwards") == "69"  # process_maxfwd(10) decrements; 10 only when absent
    # consume_credentials(): the callee never sees alice's credentials.
    assert not [k for k, _v in invite.headers if k in ("authorization", "proxy-authorization")]
    # ACK and BYE follow the Record-Route: they reach the callee through the proxy.
    for method in ("ACK", "BYE"):
        [req] = callee.received(method)
        assert _via_hosts(req.header("via")) == proxy.address, req
    assert proxy.proc.poll() is None


def test_wrong_password_never_registers(kx: tuple[Lab, ProxyRun]) -> None:
    lab, proxy = kx
    wrong = _register(
        lab, proxy, "carol", "not-carols", 401, "reg_carol_wrong", contact=f"sip:carol@{HOST}:5998"
    )
    assert wrong.received(status=200) == []
    # No binding was saved: a call to carol, once the caller has authenticated, finds no one.
    caller = lab.uac(
        "kx_call_unreachable.xml", proxy.address, name="alice_calls_carol", keys={"caller": "alice"},
        extra_args=["-s", "carol", "-au", "alice", "-ap", "alice-pw"], subst={"FINAL": "404"},
    )  # fmt: skip
    lab.expect_success(caller)
    [not_found] = caller.received(status=404)
    assert not_found.first_line == "SIP/2.0 404 Not Found"


# -- raw requests ---------------------------------------------------------------------------------------


def _request(
    port: int, source: str, sport: int, *, method: str = "OPTIONS", user: str = "", from_host: str = HOST,
    to_host: str = HOST, extra: str = "",
) -> bytes:  # fmt: skip
    ruri = f"sip:{user + '@' if user else ''}{to_host}" + (f":{port}" if to_host == HOST else "")
    tag = uuid.uuid4().hex[:8]
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:{sport};branch=z9hG4bK{uuid.uuid4().hex[:16]}\r\n"
        f"From: <sip:probe@{from_host}>;tag={tag}\r\nTo: <{ruri}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@{source}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:probe@{source}:{sport}>\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()




def _ask(proxy: ProxyRun, source: str, **kw: Any) -> list[str]:
    with udp_peer.udp_from(source) as sock:
        sock.sendto(_request(proxy.port, source, sock.getsockname()[1], **kw), (HOST, proxy.port))
        return udp_peer.finals(sock, 1.0)


def _mgmt_stats(lab: Lab) -> dict[str, object]:
    out = (lab.workdir / "proxy0.out").read_text()
    url = next(line.split(" on ", 1)[1].strip() for line in out.splitlines() if "management API on" in line)
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as reply:
        data: dict[str, object] = json.loads(reply.read())
    return data


def test_keepalive_scanner_and_open_relay_answers(kx: tuple[Lab, ProxyRun]) -> None:
    _lab, proxy = kx
    # OPTIONS to the proxy itself (no user): 200 Keepalive.
    assert _ask(proxy, "127.0.0.7") == ["SIP/2.0 200 Keepalive"]
    # A scanner's User-Agent gets a bare 200 OK and nothing happens (the REGISTER is not challenged).
    assert _ask(proxy, "127.0.0.7", method="REGISTER", extra="User-Agent: friendly-scanner\r\n") == [
        "SIP/2.0 200 OK"
    ]
    # Neither the caller nor the callee is ours: not an open relay (the 403 is retransmitted until ACKed).
    assert set(
        _ask(
            proxy, "127.0.0.7", method="INVITE", user="x", from_host="a.example.net", to_host="b.example.net"
        )
    ) == {"SIP/2.0 403 Not relaying"}


def test_a_flooding_source_is_banned_beyond_pikes_block(kx: tuple[Lab, ProxyRun]) -> None:
    lab, proxy = kx
    flooder = udp_peer.udp_from("127.0.0.5")
    sport = flooder.getsockname()[1]
    try:
        for _ in range(4 * DENSITY):
            flooder.sendto(_request(proxy.port, "127.0.0.5", sport), (HOST, proxy.port))
        answered = udp_peer.finals(flooder, 1.0)
        assert 0 < len(answered) <= DENSITY + 1, answered
        assert set(answered) == {"SIP/2.0 200 Keepalive"}
        blocked = _mgmt_stats(lab)["pike"]
        assert isinstance(blocked, dict)
        assert "127.0.0.5" in [b["source"] for b in blocked["blocked"]]
        # Pike's block has lifted; the script's "ipban" entry still drops everything from the flooder...
        time.sleep(BLOCK_TIME + 0.5)
        flooder.sendto(_request(proxy.port, "127.0.0.5", sport), (HOST, proxy.port))
        assert udp_peer.finals(flooder, 1.0) == []
    finally:
        flooder.close()
    # ...while the proxy's own address and other sources are answered.
    assert _ask(proxy, HOST) == ["SIP/2.0 200 Keepalive"]
    assert _ask(proxy, "127.0.0.6") == ["SIP/2.0 200 Keepalive"]
    assert "ALERT: pike blocking OPTIONS" in proxy.log()
