"""End-to-end: basic calls through the proxy over UDP and TCP, and a retransmitted INVITE absorbed."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import CORE, Lab

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_basic_call(lab: Lab, transport: str) -> None:
    """INVITE, 180, 200, ACK, BYE, 200 through the proxy; the dialog is record-routed through it."""
    proxy = lab.proxy(**CORE)
    uas = lab.uas("uas_answer.xml", transport=transport)
    uac = lab.uac("uac_call.xml", uas.address, rsa=proxy.address, transport=transport)
    lab.expect_success(uac, uas)

    invites = uas.received("INVITE")
    assert len(invites) == 1, lab.diagnostics()
    invite = invites[0]
    # RFC 3261 16.6: the proxy's Via on top, its Record-Route, Max-Forwards decremented.
    assert invite.header("via").startswith(f"SIP/2.0/{transport.upper()} {proxy.address};branch=z9hG4bK")
    assert proxy.address in invite.header("record-route")
    assert invite.header("max-forwards") == "69"
    assert len(uas.received("ACK")) == 1
    assert len(uas.received("BYE")) == 1
    assert {m.transport for m in uas.messages()} == {transport.upper()}
    assert [m.status for m in uac.received() if m.method == "INVITE" and m.status != 100] == [180, 200]
    assert len(uac.received("BYE")) == 0 and uac.received(status=200)[-1].method == "BYE"
    assert [ln.split()[-2] for ln in proxy.transaction_lines("INVITE")] == ["status=200"], proxy.log()
    assert [ln.split()[-2] for ln in proxy.transaction_lines("BYE")] == ["status=200"], proxy.log()


def test_retransmitted_invite_is_absorbed(lab: Lab) -> None:
    """The caller sends its INVITE twice (same branch): the callee sees one INVITE transaction."""
    proxy = lab.proxy(**CORE)
    uas = lab.uas("uas_answer.xml")
    uac = lab.uac("uac_retransmit.xml", uas.address, rsa=proxy.address, extra_args=["-nr"])
    lab.expect_success(uac, uas)

    sent = [m for m in uac.messages() if m.direction == "sent" and m.method == "INVITE"]
    assert len(sent) == 2 and sent[0].top_branch == sent[1].top_branch, lab.diagnostics()
    invites = uas.received("INVITE")
    # The proxy itself may retransmit its INVITE (same branch) if the 180 were slow: count transactions.
    assert len({m.top_branch for m in invites}) == 1, lab.diagnostics()
    assert len(uas.received("ACK")) == 1 and len(uas.received("BYE")) == 1
    assert len(proxy.transaction_lines("INVITE")) == 1, proxy.log()


def test_retransmitted_2xx_reaches_the_caller(lab: Lab) -> None:
    """The callee retransmits its 200 until the ACK comes (13.3.1.4); the proxy forwards every copy.

    RFC 6026 7.2: the proxy's INVITE client transaction stays in Accepted state and passes each 2xx
    retransmission up, and the proxy forwards it statelessly, so a caller whose ACK was lost sends it again.
    The caller here sends its ACK only after the second 200.
    """
    proxy = lab.proxy(**CORE)
    uas = lab.uas("uas_answer.xml")
    uac = lab.uac("uac_late_ack.xml", uas.address, rsa=proxy.address, extra_args=["-nr"])
    lab.expect_success(uac, uas)

    oks = [m for m in uac.received(status=200) if m.method == "INVITE"]
    assert len(oks) >= 2 and len({m.to_tag for m in oks}) == 1, lab.diagnostics()
    assert len(uas.received("ACK")) == 1
