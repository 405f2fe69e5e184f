"""Dialog limits and CDRs end to end: SIPp callers through ``trioproxy run`` to a SIPp callee.

A caller limited by the script to one concurrent call gets 486 on its second call while the first lasts;
every call gets one CDR line (JSON) in the accounting file: the answered ones with the duration SIPp held
them (its pause between ACK and BYE), the failed one with its status. ``trioproxy ctl dialogs`` lists the
dialog in progress.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import Lab, SippRun

SCRIPTS = Path(__file__).parent / "scripts"


def final_statuses(uac: SippRun) -> list[int]:
    return [
        m.status for m in uac.received() if m.method == "INVITE" and m.status is not None and m.status >= 200
    ]


def _mgmt_url(lab: Lab) -> str:
    out = (lab.workdir / "proxy0.out").read_text()
    return out.split("trioproxy management API on ", 1)[1].split()[0]


def _ctl(url: str, *args: str) -> Any:
    host_port = url.removeprefix("http://")
    cmd = [sys.executable, "-m", "trioproxy", "ctl", "--mgmt", host_port, "--json", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=20, check=True)
    return json.loads(done.stdout)


def test_dialog_limit_and_cdrs(lab: Lab) -> None:
    acc_file = lab.workdir / "acc" / "cdr.jsonl"
    proxy = lab.proxy(
        script=str(SCRIPTS / "dialog_limit.lua"),
        settings={"dialog": {"profiles_with_value": ["caller"]}, "acc": {"file": str(acc_file)}},  # type: ignore[dict-item]
    )
    callee = lab.uas("uas_answer.xml", name="callee", extra_args=["-m", "2"])
    long_call = lab.uac(
        "dlg_uac_call.xml",
        callee.address,
        rsa=proxy.address,
        subst={"PAUSE": "2500"},
        name="long",
        wait=False,
    )
    # Wait until the first call is answered (its dialog is in the caller profile), then call again.
    deadline = time.monotonic() + 10
    listed: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        answer = _ctl(_mgmt_url(lab), "dialogs")
        listed = [d for d in answer["dialogs"] if d["state"] == "confirmed"]
        if listed:
            break
        time.sleep(0.1)
    assert listed, lab.diagnostics()
    over = lab.uac("uac_failed.xml", callee.address, rsa=proxy.address, subst={"FINAL": "486"}, name="over")
    lab.expect_success(long_call, over)
    assert set(final_statuses(over)) == {486}, lab.diagnostics()
    short_call = lab.uac(
        "dlg_uac_call.xml", callee.address, rsa=proxy.address, subst={"PAUSE": "1000"}, name="short"
    )
    lab.expect_success(short_call, callee)
    assert len(callee.received("INVITE")) == 2, lab.diagnostics()  # the 486 never reached the callee

    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in acc_file.read_text().splitlines()] if acc_file.exists() else []
        if len(lines) >= 3:
            break
        time.sleep(0.1)
    cdrs = [r for r in lines if r["type"] == "cdr"]
    assert len(cdrs) == len(lines) == 3, lines  # one CDR per call placed
    by_status: dict[object, list[dict[str, object]]] = {}
    for r in cdrs:
        by_status.setdefault(r["sip_code"], []).append(r)
    answered = sorted(by_status[200], key=lambda r: float(r["duration"]))  # type: ignore[arg-type]
    [failed] = by_status[486]
    print(
        "CDR durations (pauses 1.0, 2.5 s):",
        [r["duration"] for r in answered],
        "lines:",
        len(lines),
        "calls: 3",
    )
    assert [r["end_reason"] for r in answered] == ["bye", "bye"]
    for record, pause in zip(answered, (1.0, 2.5), strict=True):
        assert abs(float(record["duration"]) - pause) < 1.0, record  # type: ignore[arg-type]
        assert record["answer_time"] is not None and record["end_time"] > record["answer_time"]  # type: ignore[operator]
    assert failed["duration"] == 0 and failed["answer_time"] is None and failed["end_reason"] == "failed"
    assert {r["call_id"] for r in cdrs} == {
        m.header("Call-ID") for run in (long_call, over, short_call) for m in run.received()
    }
    after = _ctl(_mgmt_url(lab), "dialogs")
    assert after["counts"] == {"unconfirmed": 0, "early": 0, "confirmed": 0, "active": 0}, after
