"""Trunk registration and authentication end to end (``examples/routes/trunk.lua``): trioproxy registers to
a SIPp registrar that challenges with 401, answers with digest credentials, and registers again before the
4 s the registrar granted run out; a local caller's INVITE goes to a SIPp trunk that answers 407, the
failure route's ``KSR.uac.uac_auth()`` adds the credentials and the call completes (200, ACK, BYE).
One proxy serves the module."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioproxy.auth import digest_response, ha1, parse_credentials

from .conftest import Lab, ProxyRun, SipMessage, SippRun

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parents[2] / "examples" / "routes" / "trunk.lua"
HOST = "127.0.0.1"
PASSWORD = "trunk-secret"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, ProxyRun, SippRun, SippRun]]:
    workdir = tmp_path_factory.mktemp("trunk")
    lab = Lab(workdir)
    try:
        registrar = lab.uas("trunk_registrar.xml", name="registrar")
        trunk = lab.uas("trunk_uas_auth.xml", name="trunk")
        script = workdir / "trunk.lua"
        text = EXAMPLE.read_text()
        text = text.replace('"sip:trunk.example.net"', f'"sip:{trunk.address}"', 1)
        script.write_text(text)
        extra = f"""
[uac]
reg_retry_interval = 1.0
reg_retry_max = 2.0
[[uac.registrations]]
l_uuid = "pbx1"
l_username = "office"
l_domain = "{HOST}"
r_username = "pbx"
r_domain = "trunk.example"
realm = "trunk.example"
auth_password = "{PASSWORD}"
auth_proxy = "sip:{registrar.address}"
expires = 30
"""
        proxy = lab.proxy(script=str(script), config_extra=extra)
        yield lab, proxy, registrar, trunk
    finally:
        lab.close()


def _header(message: SipMessage, name: str) -> str | None:
    return next((v for k, v in message.headers if k == name.lower()), None)


def _stats(proxy: ProxyRun) -> dict[str, object]:
    out = (proxy.stderr_path.parent / proxy.stderr_path.name.replace(".err", ".out")).read_text()
    url = re.search(r"management API on (http://\S+)", out)
    assert url, out
    with urllib.request.urlopen(f"{url.group(1)}/stats", timeout=5) as resp:
        data: dict[str, object] = json.loads(resp.read())
    return data


def test_registers_with_digest_and_refreshes_before_expiry(
    env: tuple[Lab, ProxyRun, SippRun, SippRun],
) -> None:
    lab, proxy, registrar, _trunk = env
    lab.expect_success(registrar)  # four REGISTERs: challenged, accepted (4 s), challenged, accepted
    registers = registrar.received("REGISTER")
    assert len(registers) == 4, lab.diagnostics()
    assert _header(registers[0], "Authorization") is None
    for answered, nonce in ((registers[1], "n1"), (registers[3], "n2")):
        value = _header(answered, "Authorization")
        assert value is not None
        creds = parse_credentials(value)
        assert creds is not None and creds.realm == "trunk.example" and creds.nonce.startswith(nonce)
        expected = digest_response(
            "MD5", ha1("MD5", "pbx", "trunk.example", PASSWORD), "REGISTER", creds.uri, creds.nonce,
            qop="auth", nc=creds.nc, cnonce=creds.cnonce,
        )  # fmt: skip
        assert creds.response == expected
    # Contact: our l_uuid at the proxy's own listener; To/From: the account; the CSeq grows.
    contact = _header(registers[0], "Contact") or ""
    assert f"sip:pbx1@{proxy.address}" in contact
    assert "sip:pbx@trunk.example" in (_header(registers[0], "To") or "")
    cseqs = [int((_header(m, "CSeq") or "0").split()[0]) for m in registers]
    assert cseqs == sorted(set(cseqs))
    # The refresh came before the 4 s granted ran out: the registrar's scenario waits at most 4 s for it
    # (a later one fails the scenario, and expect_success above).
    states = _stats(proxy)["uac"]
    assert isinstance(states, list) and len(states) == 1
    state = states[0]
    assert state["l_uuid"] == "pbx1" and state["registered"] is True and state["registered_count"] >= 2


def test_call_to_trunk_answers_407_with_credentials(env: tuple[Lab, ProxyRun, SippRun, SippRun]) -> None:
    lab, proxy, _registrar, trunk = env
    caller = lab.uac("uac_call.xml", proxy.address, name="caller", keys={}, extra_args=["-s", "0123456789"])
    lab.expect_success(caller, trunk)
    invites = trunk.received("INVITE")
    assert len(invites) == 2
    assert _header(invites[0], "Proxy-Authorization") is None
    value = _header(invites[1], "Proxy-Authorization")
    assert value is not None
    creds = parse_credentials(value)
    assert creds is not None and creds.username == "pbx"
    expected = digest_response(
        "MD5", ha1("MD5", "pbx", "trunk.example", PASSWORD), "INVITE", creds.uri, creds.nonce,
        qop="auth", nc=creds.nc, cnonce=creds.cnonce,
    )  # fmt: skip
    assert creds.response == expected
    # From rewritten to our account at the trunk (uac_replace_from), tag kept.
    from_value = _header(invites[1], "From") or ""
    assert "sip:pbx@trunk.example.net" in from_value and ";tag=" in from_value
    # The 407 stayed between the proxy and the trunk: the caller saw the 200 only.
    assert not caller.received(status=407)
    assert caller.received(status=200)


def test_incoming_call_from_trunk_reaches_the_local_user(
    env: tuple[Lab, ProxyRun, SippRun, SippRun], tmp_path: Path
) -> None:
    """The provider calls the contact trioproxy registered (user = l_uuid): ``uac_reg_lookup`` maps it to
    the local user ``office``, whose phone (registered at trioproxy) answers; 200, ACK and BYE pass."""
    lab, proxy, registrar, _trunk = env
    deadline = time.monotonic() + 10
    while not registrar.received("REGISTER") or _stats(proxy)["uac"][0]["registered"] is not True:  # type: ignore[index]
        assert time.monotonic() < deadline, lab.diagnostics()
        time.sleep(0.1)
    contact = _header(registrar.received("REGISTER")[0], "Contact") or ""
    m = re.search(r"sip:([^@]+)@([^;>]+)", contact)
    assert m and m.group(1) == "pbx1", contact
    phone = lab.uas("uas_answer.xml", name="office")
    users = tmp_path / "users.csv"
    users.write_text("SEQUENTIAL\noffice;\n")
    lab.uac("reg_users.xml", proxy.address, keys={"contact_hostport": phone.address, "expires": "60"},
            extra_args=["-inf", str(users)], name="office-register")  # fmt: skip
    provider = lab.uac("uac_call.xml", m.group(2), name="provider", extra_args=["-s", m.group(1)])
    lab.expect_success(provider, phone)
    invite = phone.received("INVITE")
    assert len(invite) == 1 and invite[0].first_line.startswith(f"INVITE sip:office@{phone.address}")
    assert "sip:pbx1@" in (_header(invite[0], "To") or "")  # the call is the one sent to our registration
    assert phone.received("ACK") and phone.received("BYE")
    assert provider.received(status=200)
