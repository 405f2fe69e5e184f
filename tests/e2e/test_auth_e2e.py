"""Digest authentication end to end: ``trioproxy run --db sqlite:///... --script auth.lua`` between SIPp
peers that answer challenges with ``-au``/``-ap``; the subscribers are managed with ``trioproxy user add``
while the proxy runs. One proxy serves the whole module."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioproxy.auth import digest_response, ha1

from .conftest import Lab, ProxyRun, SipMessage

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parent / "scripts" / "auth.lua"
HOST = "127.0.0.1"


def _user(db_url: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "trioproxy", "user", *args[:1], "--db", db_url, *args[1:]],
                   check=True, capture_output=True, timeout=30)  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, ProxyRun, str]]:
    workdir = tmp_path_factory.mktemp("auth")
    db_url = f"sqlite:///{workdir / 'operator.db'}"
    _user(db_url, "add", f"alice@{HOST}", "alice-pw")
    _user(db_url, "add", f"bob@{HOST}", "bob-pw")
    lab = Lab(workdir)
    try:
        # SIPp 3.6 answers the first challenge and knows only MD5: offer MD5 first here (SHA-256 is
        # exercised by the client below, which picks the SHA-256 challenge).
        settings = {"db": {"refresh_interval": 0.2}, "auth": {"algorithms": ["MD5", "SHA-256"]}}
        proxy = lab.proxy(script=str(SCRIPT), settings=settings, extra_args=["--db", db_url])
        yield lab, proxy, db_url
    finally:
        lab.close()


def _register(
    lab: Lab, proxy: ProxyRun, user: str, password: str, final: int, name: str, contact: str = ""
) -> None:
    run = lab.uac(
        "auth_register.xml", proxy.address, name=name,
        keys={"contact": contact or f"sip:{user}@{HOST}:5999"},
        extra_args=["-s", user, "-au", user, "-ap", password], subst={"FINAL": str(final)},
    )  # fmt: skip
    lab.expect_success(run)


def _challenges(messages: list[SipMessage], header: str) -> list[str]:
    return [value for m in messages for key, value in m.headers if key == header.lower()]


def _metrics(proxy: ProxyRun) -> str:
    out = (proxy.stderr_path.parent / proxy.stderr_path.name.replace(".err", ".out")).read_text()
    url = re.search(r"management API on (http://\S+)", out)
    assert url, out
    with urllib.request.urlopen(f"{url.group(1)}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_register_is_challenged_then_accepted(env: tuple[Lab, ProxyRun, str]) -> None:
    lab, proxy, _db = env
    _register(lab, proxy, "alice", "alice-pw", 200, "reg_alice")
    run = lab.sipps[-1]
    [challenge] = run.received(status=401)
    offered = _challenges([challenge], "WWW-Authenticate")
    # Both algorithms, each its own header (in the configured order); qop=auth; realm = the To domain.
    assert len(offered) == 2, challenge.text
    assert "algorithm=MD5" in offered[0] and "algorithm=SHA-256" in offered[1]
    assert all(f'realm="{HOST}"' in c and 'qop="auth"' in c for c in offered)
    assert len(run.received(status=200)) == 1


def test_wrong_password_never_registers(env: tuple[Lab, ProxyRun, str]) -> None:
    lab, proxy, _db = env
    _register(lab, proxy, "alice", "not-her-password", 401, "reg_wrong")
    assert lab.sipps[-1].received(status=200) == []
    assert re.search(r'trioproxy_auth_failures_total\{reason="invalid_password"\} [1-9]', _metrics(proxy))
    assert re.search(
        r'trioproxy_auth_failures_by_user_total\{user="alice@127.0.0.1"\} [1-9]', _metrics(proxy)
    )


def test_call_with_proxy_authentication(env: tuple[Lab, ProxyRun, str]) -> None:
    lab, proxy, _db = env
    callee = lab.uas("uas_answer.xml", name="bob_phone")
    _register(lab, proxy, "bob", "bob-pw", 200, "reg_bob", contact=f"sip:bob@{callee.address}")
    caller = lab.uac(
        "auth_call.xml", proxy.address, name="alice_calls",
        keys={"caller": "alice"}, extra_args=["-s", "bob", "-au", "alice", "-ap", "alice-pw"],
    )  # fmt: skip
    lab.expect_success(caller, callee)
    [challenge] = caller.received(status=407)
    assert len(_challenges([challenge], "Proxy-Authenticate")) == 2
    # The credentials were consumed: the callee never sees them.
    [invite] = callee.received("INVITE")
    assert not [k for k, _v in invite.headers if k in ("authorization", "proxy-authorization")]


def test_user_added_while_running_registers_without_restart(env: tuple[Lab, ProxyRun, str]) -> None:
    lab, proxy, db_url = env
    _register(lab, proxy, "carol", "carol-pw", 401, "reg_carol_unknown")
    _user(db_url, "add", f"carol@{HOST}", "carol-pw")
    deadline = time.monotonic() + 5.0
    while (
        time.monotonic() < deadline
        and "1 subscribers" not in proxy.log()
        and "3 subscribers" not in proxy.log()
    ):
        time.sleep(0.1)
    _register(lab, proxy, "carol", "carol-pw", 200, "reg_carol")
    assert proxy.proc.poll() is None


def _exchange(sock: socket.socket, proxy: ProxyRun, text: str) -> str:
    sock.sendto(text.encode(), (HOST, proxy.port))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        data = sock.recv(65535).decode()
        if not data.startswith("SIP/2.0 100"):
            return data
    raise AssertionError("no final response")


def _register_text(port: int, cseq: int, branch: str, auth: str = "") -> str:
    lines = [
        f"REGISTER sip:{HOST} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{branch}",
        f"From: <sip:alice@{HOST}>;tag=sha1",
        f"To: <sip:alice@{HOST}>",
        "Call-ID: sha256-client@127.0.0.1",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:alice@{HOST}:{port}>",
        "Max-Forwards: 70",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return "\r\n".join([*lines, "Content-Length: 0", "", ""])


def test_sha256_client_and_replayed_nonce_count(env: tuple[Lab, ProxyRun, str]) -> None:
    _lab, proxy, _db = env
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        first = _exchange(sock, proxy, _register_text(port, 1, "sha-1"))
        assert first.startswith("SIP/2.0 401"), first
        sha = [line for line in first.splitlines() if "algorithm=SHA-256" in line]
        assert len(sha) == 1, first
        nonce = re.search(r'nonce="([^"]+)"', sha[0])
        assert nonce
        uri = f"sip:{HOST}"
        response = digest_response(
            "SHA-256", ha1("SHA-256", "alice", HOST, "alice-pw"), "REGISTER", uri, nonce.group(1),
            qop="auth", nc="00000001", cnonce="c0ffee",
        )  # fmt: skip
        auth = (
            f'Digest username="alice", realm="{HOST}", nonce="{nonce.group(1)}", uri="{uri}", '
            f'response="{response}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c0ffee"'
        )
        ok = _exchange(sock, proxy, _register_text(port, 2, "sha-2", auth))
        assert ok.startswith("SIP/2.0 200"), ok
        # The same credentials again (same nonce-count) in a new transaction: a replay, challenged again.
        replay = _exchange(sock, proxy, _register_text(port, 3, "sha-3", auth))
        assert replay.startswith("SIP/2.0 401"), replay
