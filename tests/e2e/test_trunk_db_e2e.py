"""Trunk registrations from the ``--db`` ``uacreg`` table end to end: a row present at start is registered,
a row added with ``trioproxy trunk add`` while the proxy runs is registered, ``trioproxy trunk del``
unregisters it (REGISTER with Expires: 0), ``GET /trunks`` shows the states, and SIGTERM unregisters the
trunk still registered before the process exits. One proxy serves the module."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from trioproxy.cli import main

from .conftest import HOST, Lab, ProxyRun, SipMessage, SippRun

pytestmark = pytest.mark.e2e


def _header(message: SipMessage, name: str) -> str:
    return next((v for k, v in message.headers if k == name.lower()), "")


def _trunks(proxy: ProxyRun) -> dict[str, dict[str, object]]:
    out = (proxy.stderr_path.parent / proxy.stderr_path.name.replace(".err", ".out")).read_text()
    url = re.search(r"management API on (http://\S+)", out)
    assert url, out
    with urllib.request.urlopen(f"{url.group(1)}/trunks", timeout=5) as resp:
        data = json.loads(resp.read())
    return {t["l_uuid"]: t for t in data["trunks"]}


def _registers(registrar: SippRun, uuid: str) -> list[SipMessage]:
    return [m for m in registrar.received("REGISTER") if f"sip:{uuid}@" in _header(m, "Contact")]


def _wait_for(what: str, lab: Lab, check: object, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen in {timeout} s\n{lab.diagnostics()}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, ProxyRun, SippRun, str]]:
    workdir = tmp_path_factory.mktemp("trunkdb")
    lab = Lab(workdir)
    url = f"sqlite:///{workdir / 'operator.db'}"
    try:
        registrar = lab.uas("trunk_registrar_plain.xml", name="registrar", extra_args=["-m", "2"])
        trunk = ["--r-user", "pbx@trunk.example", "--proxy", f"sip:{registrar.address}", "--expires", "30"]
        assert main(["trunk", "add", "--db", url, "pbx2", "--l-user", f"office@{HOST}", *trunk]) == 0
        assert main(["trunk", "add", "--db", url, "off", "--l-user", f"x@{HOST}", *trunk, "--flags", "1"]) == 0
        proxy = lab.proxy(
            settings={"db": {"refresh_interval": 0.2}, "proxy": {"drain_time": 3.0}},
            extra_args=["--db", url],
        )
        yield lab, proxy, registrar, url
    finally:
        lab.close()


def test_rows_register_and_a_deleted_row_unregisters(env: tuple[Lab, ProxyRun, SippRun, str]) -> None:
    lab, proxy, registrar, url = env
    _wait_for("pbx2 registered", lab, lambda: _trunks(proxy).get("pbx2", {}).get("state") == "registered")
    first = _registers(registrar, "pbx2")
    assert len(first) == 1 and _header(first[0], "Expires") == "30"
    assert f"sip:pbx2@{proxy.address}" in _header(first[0], "Contact")
    states = _trunks(proxy)
    assert states["off"]["state"] == "disabled" and not _registers(registrar, "off")
    assert isinstance(states["pbx2"]["expires_at"], float) and states["pbx2"]["expires_at"] > time.time() + 20
    assert states["pbx2"]["source"] == "db"

    # Added while running: registered within the refresh interval, no restart.
    add = ["--r-user", "pbx3@trunk.example", "--proxy", f"sip:{registrar.address}", "--expires", "30"]
    assert main(["trunk", "add", "--db", url, "pbx3", "--l-user", f"desk@{HOST}", *add]) == 0
    _wait_for("pbx3 registered", lab, lambda: _trunks(proxy).get("pbx3", {}).get("state") == "registered")
    # Deleted while running: its binding is removed with Expires: 0, then it is gone from the API.
    assert main(["trunk", "del", "--db", url, "pbx3"]) == 0
    _wait_for("pbx3 unregistered", lab, lambda: len(_registers(registrar, "pbx3")) == 2)
    added, removed = _registers(registrar, "pbx3")
    assert _header(added, "Expires") == "30" and _header(removed, "Expires") == "0"
    assert _header(removed, "Call-ID") == _header(added, "Call-ID")
    assert _header(removed, "Contact") == _header(added, "Contact")
    _wait_for("pbx3 gone", lab, lambda: "pbx3" not in _trunks(proxy))


def test_sigterm_unregisters_before_exit(env: tuple[Lab, ProxyRun, SippRun, str]) -> None:
    lab, proxy, registrar, _url = env
    assert _trunks(proxy)["pbx2"]["state"] == "registered"
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=10) == 0, lab.diagnostics()
    lab.expect_success(registrar)  # both registrations ran to their end: each removed once
    regs = _registers(registrar, "pbx2")
    assert [_header(m, "Expires") for m in regs] == ["30", "0"], lab.diagnostics()
    assert "trunks: 1 registrations removed" in proxy.log()
