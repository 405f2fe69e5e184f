"""Trunk registration state machine (virtual time as an input), the digest client, KSR.uac and the config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trioproxy.auth import build_challenge, ha1, parse_credentials, verify_response
from trioproxy.config import ConfigError, load_config
from trioproxy.routing.htable import HtableStore
from trioproxy.routing.ksr_core import KsrContext
from trioproxy.routing.ksr_uac import Uac
from trioproxy.routing.state import RequestState
from trioproxy.sip import Request, Response, make_response, parse_message_untrusted
from trioproxy.uac import Registration, RegState, Trunk, refresh_delay
from trioproxy.uac.client import TrunkRegistry, use_uac

TRUNK = Trunk("pbx1", "office", "example.com", "pbx", "trunk.example", realm="trunk.example",
              auth_password="secret", expires=60)  # fmt: skip


def _reg(**kw: float) -> Registration:
    return Registration(TRUNK, "sip:pbx1@127.0.0.1:5060", retry_interval=kw.get("retry", 2.0),
                        retry_max=kw.get("cap", 16.0))  # fmt: skip


def _answer(req: Request, status: int, *headers: tuple[str, str]) -> Response:
    req.insert_top("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx")
    resp = make_response(req, status, "X", to_tag="t1")
    for name, value in headers:
        resp.append(name, value)
    return resp


def _challenge(nonce: str = "abc", stale: bool = False) -> tuple[str, str]:
    return ("WWW-Authenticate", build_challenge("trunk.example", nonce, "MD5", stale=stale))


def test_challenge_answer_then_refresh_before_expiry() -> None:
    reg = _reg()
    first = reg.poll(0.0)
    assert first is not None and first.method == "REGISTER" and str(first.uri) == "sip:trunk.example"
    assert first.get("Authorization") is None and first.get("Expires") == "60"
    assert reg.poll(0.1) is None  # one REGISTER at a time
    second = reg.on_response(_answer(first, 401, _challenge()), 0.2)
    assert second is not None and second.cseq.seq == first.cseq.seq + 1 and second.call_id == first.call_id
    creds = parse_credentials(second.get("Authorization") or "")
    assert creds is not None and creds.username == "pbx" and creds.uri == "sip:trunk.example"
    assert verify_response(creds, ha1("MD5", "pbx", "trunk.example", "secret"), "REGISTER")
    ok = _answer(second, 200, ("Contact", "<sip:pbx1@127.0.0.1:5060>;expires=40"))
    assert reg.on_response(ok, 1.0) is None
    assert reg.state is RegState.REGISTERED and reg.granted == 40 and reg.is_registered(1.0)
    due = reg.next_deadline()
    assert due is not None
    assert due == pytest.approx(1.0 + refresh_delay(40)) and due < 41.0
    assert reg.poll(due - 0.01) is None
    refresh = reg.poll(due)
    assert refresh is not None and refresh.cseq.seq == second.cseq.seq + 1


def test_refresh_delay_bounds() -> None:
    assert refresh_delay(3600) == pytest.approx(3240)
    assert refresh_delay(30) == pytest.approx(25)
    assert refresh_delay(4) == pytest.approx(2)


def test_wrong_password_backs_off_exponentially_with_a_cap() -> None:
    reg = _reg(retry=2.0, cap=5.0)
    now = 0.0
    delays = []
    for _ in range(4):
        req = reg.poll(now)
        assert req is not None
        answered = reg.on_response(_answer(req, 401, _challenge()), now)
        assert answered is not None
        assert reg.on_response(_answer(answered, 401, _challenge()), now) is None  # same challenge again
        assert reg.state is RegState.FAILED and reg.last_status == 401
        delays.append(reg.deadline - now)
        now = reg.deadline
    assert delays == [2.0, 4.0, 5.0, 5.0]


def test_stale_nonce_is_answered_again() -> None:
    reg = _reg()
    req = reg.poll(0.0)
    assert req is not None
    answered = reg.on_response(_answer(req, 401, _challenge("n1")), 0.0)
    assert answered is not None
    again = reg.on_response(_answer(answered, 401, _challenge("n2", stale=True)), 0.0)
    assert again is not None and 'nonce="n2"' in (again.get("Authorization") or "")


def test_403_and_timeout_back_off_then_success_resets() -> None:
    reg = _reg(retry=3.0)
    req = reg.poll(0.0)
    assert req is not None
    assert reg.on_response(_answer(req, 403), 1.0) is None
    assert reg.state is RegState.FAILED and reg.deadline == 4.0 and reg.poll(3.9) is None
    req = reg.poll(4.0)
    assert req is not None
    reg.on_timeout(36.0)
    assert reg.last_status == 408 and reg.deadline == 36.0 + 6.0
    req = reg.poll(42.0)
    assert req is not None
    assert reg.on_response(_answer(req, 200, ("Expires", "10")), 42.0) is None
    assert reg.failures == 0 and reg.expires_at == 52.0


def test_423_retries_with_min_expires() -> None:
    reg = _reg()
    req = reg.poll(0.0)
    assert req is not None
    retry = reg.on_response(_answer(req, 423, ("Min-Expires", "120")), 0.0)
    assert retry is not None and retry.get("Expires") == "120"


def test_realm_mismatch_fails() -> None:
    reg = _reg()
    req = reg.poll(0.0)
    assert req is not None
    other = ("WWW-Authenticate", build_challenge("elsewhere", "x", "MD5"))
    assert reg.on_response(_answer(req, 401, other), 0.0) is None and reg.state is RegState.FAILED


def _failure_state(status: int, header: str) -> tuple[KsrContext, Uac, Request]:
    invite = parse_message_untrusted(
        b"INVITE sip:0123@trunk.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\n"
        b'From: "Al" <sip:al@example.com>;tag=f1\r\nTo: <sip:0123@trunk.example>\r\nCall-ID: c1\r\n'
        b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(invite, Request)
    reply = make_response(invite, status, "Auth", to_tag="t")
    reply.append(header, build_challenge("trunk.example", "nn", "MD5"))
    ctx = KsrContext("t", HtableStore(), logging.getLogger("t"))
    ctx.state = RequestState(msg=invite, route="failure", response=reply)
    return ctx, Uac(ctx), invite


def test_uac_auth_answers_407_with_matching_credentials() -> None:
    _ctx, uac, invite = _failure_state(407, "Proxy-Authenticate")
    assert uac.uac_auth() == -1  # no registry: no credentials
    with use_uac(TrunkRegistry([TRUNK])):
        assert uac.uac_auth() == 1
    creds = parse_credentials(invite.get("Proxy-Authorization") or "")
    assert creds is not None and creds.uri == "sip:0123@trunk.example"
    assert verify_response(creds, ha1("MD5", "pbx", "trunk.example", "secret"), "INVITE")
    with use_uac(TrunkRegistry([Trunk("x", "x", "x", "x", "other.example", realm="other")])):
        _ctx2, uac2, invite2 = _failure_state(401, "WWW-Authenticate")
        assert uac2.uac_auth() == -1 and invite2.get("Authorization") is None


def test_replace_from_keeps_tag_and_reg_lookup() -> None:
    ctx, uac, invite = _failure_state(407, "Proxy-Authenticate")
    assert uac.uac_replace_from("PBX", "sip:pbx@trunk.example") == 1
    assert invite.from_.uri.user == "pbx" and invite.from_.tag == "f1" and invite.from_.display == "PBX"
    assert uac.uac_replace_to("", "sip:9@trunk.example") == 1 and str(invite.to.uri) == "sip:9@trunk.example"
    assert uac.uac_replace_from("", "not a uri") == -1
    st = ctx.st
    st.set_ruri("sip:pbx1@127.0.0.1")
    with use_uac(TrunkRegistry([TRUNK])):
        assert uac.uac_reg_lookup("$rU", "$ru") == 1
        assert str(invite.uri) == "sip:office@example.com"
        assert uac.uac_reg_lookup("nobody", "$ru") == -1
        assert uac.uac_reg_status("pbx1") == -1 and uac.uac_reg_status("nobody") == -99


def test_config_registrations(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[uac]\nreg_retry_interval = 5.0\n[[uac.registrations]]\nl_uuid = "a"\nl_username = "u"\n'
        'l_domain = "d"\nr_username = "r"\nr_domain = "p.example"\nauth_password = "pw"\nexpires = 120\n'
    )
    config = load_config(path)
    [reg] = config.uac.registrations
    assert reg.r_domain == "p.example" and reg.expires == 120 and config.uac.reg_retry_interval == 5.0
    path.write_text('[[uac.registrations]]\nl_uuid = "a"\n')
    with pytest.raises(ConfigError, match="l_username"):
        load_config(path)
