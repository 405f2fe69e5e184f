"""End-to-end: a callee that never answers (Timer B: 408) and one that rings forever (Timer C: CANCEL)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import CORE, Lab, SippRun

pytestmark = pytest.mark.e2e


def final_statuses(uac: SippRun) -> list[int]:
    return [
        m.status for m in uac.received() if m.method == "INVITE" and m.status is not None and m.status >= 200
    ]


def test_silent_callee_gives_408(lab: Lab) -> None:
    """No response at all: the branch's Timer B (64*T1 = 3.2 s) fires and the caller gets a 408.

    RFC 3261 16.8 / 9.1: with no provisional, the proxy sends no CANCEL; it acts as if it got a 408.
    """
    proxy = lab.proxy(**CORE, timer_t1=0.05)
    uas = lab.uas("uas_silent.xml")
    uac = lab.uac("uac_failed.xml", uas.address, rsa=proxy.address, subst={"FINAL": "408"})
    lab.expect_success(uac, uas)

    invites = uas.received("INVITE")
    assert len(invites) >= 1 and len({m.top_branch for m in invites}) == 1, lab.diagnostics()
    assert uas.received("CANCEL") == []
    assert set(final_statuses(uac)) == {408}, lab.diagnostics()
    assert [ln.split()[-2] for ln in proxy.transaction_lines("INVITE")] == ["status=408"], proxy.log()


def test_ringing_callee_cancelled_by_timer_c(lab: Lab) -> None:
    """A 180 and then nothing: Timer C fires, the proxy CANCELs the branch and relays its 487.

    RFC 3261 16.8: when Timer C fires on a branch that had a provisional response, the proxy MUST CANCEL it
    (only a branch with no provisional is treated as a 408); the branch then ends with the callee's 487,
    which is the best (only) response and goes to the caller.
    """
    proxy = lab.proxy(**CORE, timer_c=2.0)
    uas = lab.uas("uas_ring_cancel.xml")
    uac = lab.uac("uac_failed.xml", uas.address, rsa=proxy.address, subst={"FINAL": "487"})
    lab.expect_success(uac, uas)

    assert len(uas.received("CANCEL")) == 1, lab.diagnostics()
    assert set(final_statuses(uac)) == {487}, lab.diagnostics()
    assert [ln.split()[-2] for ln in proxy.transaction_lines("INVITE")] == ["status=487"], proxy.log()
