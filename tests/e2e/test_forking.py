"""End-to-end: parallel and serial forking, a 6xx cancelling the other branch, the caller's CANCEL."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import CORE, Lab, SippRun

pytestmark = pytest.mark.e2e


def target(uas: SippRun, user: str) -> str:
    return f"sip:{user}@{uas.address}"


def final_statuses(uac: SippRun, method: str = "INVITE") -> list[int]:
    return [
        m.status for m in uac.received() if m.method == method and m.status is not None and m.status >= 200
    ]


def test_parallel_fork_answer_cancels_the_ringing_branch(lab: Lab) -> None:
    """Two branches in parallel: one answers 200, the other rings, gets CANCEL and answers 487."""
    answer = lab.uas("uas_answer.xml", name="answer")
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    proxy = lab.proxy(**CORE, fork=[[target(answer, "a"), target(ringing, "b")]])
    uac = lab.uac("uac_call.xml", proxy.address)
    lab.expect_success(uac, answer, ringing)

    assert len(answer.received("INVITE")) == 1 and len(ringing.received("INVITE")) == 1
    assert len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    assert answer.received("CANCEL") == []
    # The caller sees exactly one 200 for its INVITE (one dialog: the answering branch's).
    oks = uac.received(status=200)
    invite_tags = {m.to_tag for m in oks if m.method == "INVITE"}
    answer_tags = {m.to_tag for m in answer.messages() if m.direction == "sent" and m.status == 200}
    assert len(invite_tags) == 1 and invite_tags <= answer_tags, lab.diagnostics()
    assert 487 not in final_statuses(uac), lab.diagnostics()
    assert [ln.split()[-2] for ln in proxy.transaction_lines("INVITE")] == ["status=200"], proxy.log()


def test_serial_fork_busy_then_answer(lab: Lab) -> None:
    """Two stages: the first target answers 486, then the second is tried and answers 200."""
    busy = lab.uas("uas_reject.xml", name="busy", subst={"STATUS": "486", "REASON": "Busy Here"})
    answer = lab.uas("uas_answer.xml", name="answer")
    proxy = lab.proxy(**CORE, fork=[[target(busy, "a")], [target(answer, "b")]])
    uac = lab.uac("uac_call.xml", proxy.address)
    lab.expect_success(uac, busy, answer)

    assert len(busy.received("INVITE")) == 1 and len(busy.received("ACK")) == 1
    assert len(answer.received("INVITE")) == 1, lab.diagnostics()
    # The 486 stays in the proxy (16.7 step 6 store): the caller sees only the 200.
    assert set(final_statuses(uac)) == {200}, lab.diagnostics()
    assert [ln.split()[-3:-1] for ln in proxy.transaction_lines("INVITE")] == [["branches=2", "status=200"]]


def test_decline_on_one_branch_cancels_the_other(lab: Lab) -> None:
    """A 603 on one branch cancels the ringing one (16.7 step 5-6); the caller receives the 603."""
    decline = lab.uas("uas_reject.xml", name="decline", subst={"STATUS": "603", "REASON": "Decline"})
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    proxy = lab.proxy(**CORE, fork=[[target(decline, "a"), target(ringing, "b")]])
    uac = lab.uac("uac_failed.xml", proxy.address, subst={"FINAL": "603"})
    lab.expect_success(uac, decline, ringing)

    assert len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    assert decline.received("CANCEL") == []
    assert set(final_statuses(uac)) == {603}, lab.diagnostics()
    assert [ln.split()[-2] for ln in proxy.transaction_lines("INVITE")] == ["status=603"], proxy.log()


def test_caller_cancel_reaches_both_ringing_branches(lab: Lab) -> None:
    """The caller's CANCEL: 200 for it, CANCEL on both ringing branches, 487 for the INVITE (16.10)."""
    first = lab.uas("uas_ring_cancel.xml", name="first")
    second = lab.uas("uas_ring_cancel.xml", name="second")
    proxy = lab.proxy(**CORE, fork=[[target(first, "a"), target(second, "b")]])
    uac = lab.uac("uac_cancel.xml", proxy.address)
    lab.expect_success(uac, first, second)

    assert len(first.received("CANCEL")) == 1 and len(second.received("CANCEL")) == 1, lab.diagnostics()
    assert set(final_statuses(uac, "CANCEL")) == {200}
    assert set(final_statuses(uac)) == {487}, lab.diagnostics()
    assert [ln.split()[-2] for ln in proxy.transaction_lines("INVITE")] == ["status=487"], proxy.log()
