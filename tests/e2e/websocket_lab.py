"""Shared by the WebSocket end-to-end tests (``test_ws_e2e``, ``test_browser_e2e``, ``test_webrtc_e2e``): a
proxy with WS and WSS listeners and a trustme certificate, and the command line of a browser driver
(``browser/*.mjs``, run by node with headless Chromium)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme

from .conftest import HOST, Lab, ProxyRun, free_port

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class WsLab:
    """A ``trioproxy run`` listening on ``ws:`` and ``wss:`` too (its certificate signed by ``ca``)."""

    lab: Lab
    proxy: ProxyRun
    ws_port: int
    wss_port: int
    ca: trustme.CA


@contextmanager
def ws_proxy(
    workdir: Path,
    *,
    script: str | None = None,
    settings: Mapping[str, Mapping[str, str | int | float | bool]] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[WsLab]:
    """A proxy (``Lab.proxy`` with ``script``, ``settings``, ``extra_args``) with WS and WSS listeners on two free
    ports, a trustme certificate for ``HOST`` in ``workdir`` (proxy.pem, proxy.key); closed on exit."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    (workdir / "proxy.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(workdir / "proxy.key"))
    lab = Lab(workdir)
    ws_port, wss_port = free_port(), free_port()
    try:
        proxy = lab.proxy(
            script=script,
            settings=settings,
            extra_args=[
                "--listen", f"ws:{HOST}:{ws_port}",
                "--listen", f"wss:{HOST}:{wss_port}",
                "--tls-cert", str(workdir / "proxy.pem"),
                "--tls-key", str(workdir / "proxy.key"),
                *extra_args,
            ],
        )  # fmt: skip
        yield WsLab(lab, proxy, ws_port, wss_port, ca)
    finally:
        lab.close()


def driver_command(script: str, ws_port: int, wss_port: int) -> list[str]:
    """``node browser/SCRIPT OPTIONS``: a driver whose phones register over ``ws_port`` and ``wss_port``
    (fails the test when node, Chromium or the driver's node modules are missing)."""
    node = shutil.which("node")
    assert node is not None, "node is missing: scripts/test installs nodejs and npm"
    assert Path(CHROMIUM).exists(), "chromium is missing: scripts/test installs it (apt-get install chromium)"
    assert (BROWSER_DIR / "node_modules" / "jssip").is_dir(), (
        "tests/e2e/browser/node_modules is missing: run scripts/test (or `npm ci` in tests/e2e/browser)"
    )
    options = {
        "ws": f"ws://{HOST}:{ws_port}",
        "wss": f"wss://{HOST}:{wss_port}",
        "domain": HOST,
        "chromium": CHROMIUM,
    }
    return [node, str(BROWSER_DIR / script), json.dumps(options)]
