"""Two real browsers call each other through trioproxy's WebSocket transports (RFC 7118).

Headless Chromium (Debian's ``chromium``, fake audio device) runs two pages, each a JsSIP phone
(``browser/phone.js``), driven by Playwright (``browser/driver.mjs``; ``npm ci`` in ``tests/e2e/browser`` installs
JsSIP, playwright-core and esbuild, as ``scripts/test`` does). Alice registers over WSS (a trustme
certificate; Chromium is told to ignore certificate errors), Bob over WS; Alice calls Bob, Bob answers, audio
flows between the two browsers over loopback (they use only each other's 127.0.0.1 candidates), Alice hangs
up. The proxy runs ``browser/route.lua``: Kamailio's way with WebSocket clients (``nat_uac_test(64)``,
``fix_nated_register``, ``add_contact_alias`` in request and reply routes, ``handle_ruri_alias``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .websocket_lab import BROWSER_DIR, WsLab, driver_command, ws_proxy

pytestmark = pytest.mark.e2e

DRIVER_TIMEOUT = 90.0  # seconds for the whole browser run (the driver bounds itself at 60)


@pytest.fixture(scope="module")
def browser_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsLab]:
    with ws_proxy(tmp_path_factory.mktemp("browser"), script=str(BROWSER_DIR / "route.lua")) as lab:
        yield lab


def _run_driver(blab: WsLab) -> dict[str, Any]:
    proc = subprocess.run(
        driver_command("driver.mjs", blab.ws_port, blab.wss_port),
        capture_output=True,
        timeout=DRIVER_TIMEOUT,
        cwd=BROWSER_DIR,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = [line for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith("{")]
    assert lines, (
        f"the driver printed no result (exit {proc.returncode}):\n{proc.stderr.decode(errors='replace')}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    result["_exit"] = proc.returncode
    result["_stderr"] = proc.stderr.decode(errors="replace")[-3000:]
    return result


def test_two_browsers_register_over_ws_and_wss_and_call(browser_lab: WsLab) -> None:
    result = _run_driver(browser_lab)
    proxy = browser_lab.proxy
    context = f"{json.dumps(result, indent=1)}\n--- proxy log\n{proxy.log()}"
    assert result["error"] is None and result["_exit"] == 0, context
    # Both REGISTERs answered 200 (one over WSS, one over WS).
    assert result["registered"] == {"alice": 200, "bob": 200}, context
    # The call was answered and confirmed (200 and ACK) on both sides.
    assert result["confirmed"] == {"alice": True, "bob": True}, context
    # Audio flowed both ways between the browsers: inbound RTP packets, growing between two samples.
    for name in ("alice", "bob"):
        first, second = result["packets"][name]
        assert 0 < first < second, (name, context)
    # Alice's BYE ended the call on both sides (JsSIP's cause for a BYE is "Terminated").
    assert result["ended"] == {"alice": "Terminated", "bob": "Terminated"}, context
    # The proxy saw it all: two REGISTERs, the INVITE answered 200, the BYE answered 200.
    lines = proxy.transaction_lines()
    assert sum(1 for line in lines if line.startswith("REGISTER ") and "status=200" in line) >= 2, context
    assert any(line.startswith("INVITE sip:bob@") and "status=200" in line for line in lines), context
    assert any(line.startswith("BYE ") and "status=200" in line for line in lines), context
