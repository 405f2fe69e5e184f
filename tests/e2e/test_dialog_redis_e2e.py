"""Dialog profiles shared between two ``trioproxy run`` instances through one Redis (``[dialog] store``).

Both proxies run ``dialog_limit.lua`` (one concurrent call per caller): while a call through proxy A is up,
the same caller's call through proxy B gets 486 without reaching the callee; once the first call's BYE has
passed A, a call through B goes through.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.redis_server import redis_server_url, unique_prefix

from .conftest import Lab, ProxyRun, SippRun

__all__ = ["redis_server_url"]  # the session fixture, wired here for this module

SCRIPTS = Path(__file__).parent / "scripts"


def final_statuses(uac: SippRun) -> list[int]:
    return [
        m.status for m in uac.received() if m.method == "INVITE" and m.status is not None and m.status >= 200
    ]


def confirmed_dialogs(lab: Lab, n: int) -> list[dict[str, Any]]:
    """The confirmed dialogs ``trioproxy ctl dialogs`` lists on proxy number ``n`` (its own, per instance)."""
    out = (lab.workdir / f"proxy{n}.out").read_text()
    url = out.split("trioproxy management API on ", 1)[1].split()[0]
    with urllib.request.urlopen(f"{url}/dialogs?limit=100", timeout=5) as answer:
        listed: list[dict[str, Any]] = json.load(answer)["dialogs"]
    return [d for d in listed if d["state"] == "confirmed"]


def limited_proxy(lab: Lab, store: str) -> ProxyRun:
    return lab.proxy(
        script=str(SCRIPTS / "dialog_limit.lua"),
        settings={"dialog": {"profiles_with_value": ["caller"], "store": store}},  # type: ignore[dict-item]
    )


def test_two_instances_share_the_caller_limit(lab: Lab, redis_server_url: str) -> None:
    store = f"{redis_server_url}?prefix={unique_prefix()}"
    a = limited_proxy(lab, store)
    b = limited_proxy(lab, store)
    callee = lab.uas("uas_answer.xml", name="callee", extra_args=["-m", "2"])
    first = lab.uac(
        "dlg_uac_call.xml", callee.address, rsa=a.address, subst={"PAUSE": "2500"}, name="first", wait=False
    )
    deadline = time.monotonic() + 10
    up: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not up:
        up = confirmed_dialogs(lab, 0)
        time.sleep(0.05)
    assert up, lab.diagnostics()
    assert confirmed_dialogs(lab, 1) == []  # B tracks no dialog: only the count is shared
    over = lab.uac("uac_failed.xml", callee.address, rsa=b.address, subst={"FINAL": "486"}, name="over")
    lab.expect_success(first, over)
    assert set(final_statuses(over)) == {486}, lab.diagnostics()
    assert set(final_statuses(first)) == {200}, lab.diagnostics()
    # The first call's BYE went through A: its dialog left the profile, so B lets the caller call again.
    again = lab.uac("dlg_uac_call.xml", callee.address, rsa=b.address, subst={"PAUSE": "200"}, name="again")
    lab.expect_success(again, callee)
    assert set(final_statuses(again)) == {200}, lab.diagnostics()
    assert len(callee.received("INVITE")) == 2, lab.diagnostics()  # the 486 never reached the callee
