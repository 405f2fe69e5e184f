"""Client transactions (RFC 3261 17.1, RFC 6026 Accepted) driven by hand with explicit times."""

from __future__ import annotations

import pytest

from tests.unit.test_transaction_support import BRANCH, TCP_DEST, UDP_DEST, kinds, on_wire, request, response
from trioproxy.sip import Address, Request
from trioproxy.transaction import (
    ClientTransaction,
    ResponseReceived,
    SendRequest,
    State,
    Terminated,
    Timeout,
    Timers,
    TransactionTable,
    TransportFailed,
)
from trioproxy.transaction.actions import Action


def run(table: TransactionTable, end: float) -> list[tuple[float, Action]]:
    """Fire every due timer up to ``end``; returns (time, action) pairs."""
    out: list[tuple[float, Action]] = []
    while (deadline := table.next_deadline()) is not None and deadline <= end:
        out += [(deadline, a) for a in table.expire(deadline)]
    return out


def send_times(log: list[tuple[float, Action]], method: str = "INVITE") -> list[float]:
    return [t for t, a in log if isinstance(a, SendRequest) and a.msg.method == method]


def start(
    method: str = "INVITE", dest: Address = UDP_DEST, now: float = 0.0, timers: Timers | None = None
) -> tuple[TransactionTable, ClientTransaction, Request]:
    table = TransactionTable(timers)
    req = request(method)
    txn, actions = table.start_client(req, dest, now, user="branch-1")
    assert actions == [SendRequest(req, dest, txn)]
    assert txn.user == "branch-1"
    return table, txn, req


# -- INVITE client: Timer A and B ----------------------------------------------------------------


def test_invite_udp_retransmits_at_doubling_intervals_then_times_out() -> None:
    table, txn, req = start()
    assert txn.state is State.CALLING
    assert table.next_deadline() == 0.5
    log = run(table, 100.0)
    # 17.1.1.2: T1, 2T1, 4T1, ... apart (uncapped for INVITE), until Timer B = 64*T1.
    assert send_times(log) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(a.msg is req for _, a in log if isinstance(a, SendRequest))
    assert [(t, type(a).__name__) for t, a in log if not isinstance(a, SendRequest)] == [
        (32.0, "Timeout"),
        (32.0, "Terminated"),
    ]
    assert txn.state is State.TERMINATED
    assert len(table) == 0
    stats = table.statistics()
    assert stats["retransmissions_sent"] == 6
    assert stats["timeouts"] == 1
    assert stats["client_invite"] == 0
    assert stats["timers_pending"] == 0
    assert table.next_deadline() is None


def test_invite_tcp_never_retransmits_and_times_out_at_64_t1() -> None:
    table, _txn, _ = start(dest=TCP_DEST)
    assert table.next_deadline() == 32.0
    log = run(table, 100.0)
    assert [(t, type(a).__name__) for t, a in log] == [(32.0, "Timeout"), (32.0, "Terminated")]


def test_timer_b_follows_t1() -> None:
    table, _, _ = start(timers=Timers(t1=0.1, t2=1.0))
    log = run(table, 100.0)
    assert send_times(log) == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert [t for t, a in log if isinstance(a, Timeout)] == pytest.approx([6.4])


def test_timer_does_not_fire_early() -> None:
    table, _, _ = start()
    assert table.expire(0.49) == []
    assert kinds(table.expire(0.5)) == ["SendRequest"]
    assert table.next_deadline() == 1.5


def test_provisional_stops_a_and_b() -> None:
    table, txn, req = start()
    run(table, 1.0)
    ringing = response(req, 180)
    assert table.receive(ringing, None, 1.2) == [ResponseReceived(txn, ringing)]
    assert txn.state is State.PROCEEDING
    assert table.next_deadline() is None  # Timer C is the proxy's (16.6 step 11)
    trying = response(req, 100, to_tag=None)
    assert kinds(table.receive(trying, None, 1.3)) == ["ResponseReceived"]
    assert table.statistics()["timers_pending"] == 0


@pytest.mark.parametrize("first", [None, 180])
@pytest.mark.parametrize("status", [300, 404, 486, 503, 603])
def test_non_2xx_final_is_acked_on_the_same_branch(first: int | None, status: int) -> None:
    table, txn, req = start()
    if first:
        table.receive(response(req, first), None, 0.2)
    final = response(req, status, to_tag="callee")
    actions = table.receive(final, None, 0.4)
    assert kinds(actions) == ["ResponseReceived", "SendRequest"]
    ack = actions[1].msg  # type: ignore[union-attr]
    assert isinstance(ack, Request)
    assert ack.to_bytes() == txn.ack  # kept as its bytes, to resend it
    # 17.1.1.3: same Request-URI, Call-ID, From, top Via (branch), To of the response, CSeq n ACK.
    assert ack.method == "ACK"
    assert str(ack.uri) == str(req.uri)
    assert ack.top_via.branch == BRANCH
    assert ack.to.tag == "callee"
    assert (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.call_id == req.call_id
    assert actions[1] == SendRequest(ack, UDP_DEST, txn)
    assert txn.state is State.COMPLETED
    # 17.1.1.2: each retransmission of the final is answered with the ACK again, not passed up.
    again = table.receive(response(req, status, to_tag="callee"), None, 5.0)
    assert on_wire(again) == on_wire([SendRequest(ack, UDP_DEST, txn)])
    # Timer D: 32 s over UDP, then Terminated.
    assert table.next_deadline() == pytest.approx(32.4)
    assert kinds(table.expire(32.4)) == ["Terminated"]
    assert len(table) == 0


def test_non_2xx_over_tcp_terminates_at_once() -> None:
    table, txn, req = start(dest=TCP_DEST)
    actions = table.receive(response(req, 486), None, 1.0)
    assert kinds(actions) == ["ResponseReceived", "SendRequest", "Terminated"]
    assert txn.state is State.TERMINATED
    assert table.next_deadline() is None
    assert len(table) == 0


def test_2xx_goes_to_accepted_and_every_2xx_is_passed_up() -> None:
    table, txn, req = start()
    ok = response(req, 200, to_tag="uas-1")
    assert table.receive(ok, None, 2.0) == [ResponseReceived(txn, ok)]
    assert txn.state is State.ACCEPTED
    assert txn.ack is None  # the ACK for a 2xx belongs to the UAC core, end to end
    assert table.next_deadline() == 34.0  # Timer M = 64*T1
    # RFC 6026 7.2: retransmissions and 2xx from other forks go up; anything else is absorbed.
    again = response(req, 200, to_tag="uas-1")
    other = response(req, 200, to_tag="uas-2")
    assert table.receive(again, None, 3.0) == [ResponseReceived(txn, again)]
    assert table.receive(other, None, 4.0) == [ResponseReceived(txn, other)]
    assert table.receive(response(req, 486), None, 5.0) == []
    assert table.receive(response(req, 180), None, 5.0) == []
    assert kinds(table.expire(34.0)) == ["Terminated"]
    assert len(table) == 0


def test_2xx_over_tcp_still_waits_timer_m() -> None:
    table, txn, req = start(dest=TCP_DEST)
    table.receive(response(req, 200), None, 1.0)
    assert txn.state is State.ACCEPTED
    assert table.next_deadline() == 33.0


def test_responses_after_completion_are_absorbed() -> None:
    table, _, req = start()
    table.receive(response(req, 404), None, 1.0)
    assert table.receive(response(req, 200), None, 2.0) == []
    assert table.receive(response(req, 180), None, 2.0) == []
    assert table.statistics()["absorbed"] == 2


# -- non-INVITE client: Timer E, F, K ------------------------------------------------------------


def test_non_invite_udp_timer_e_caps_at_t2_then_timer_f() -> None:
    table, txn, _ = start("OPTIONS")
    assert txn.state is State.TRYING
    log = run(table, 100.0)
    assert send_times(log, "OPTIONS") == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, type(a).__name__) for t, a in log if not isinstance(a, SendRequest)] == [
        (32.0, "Timeout"),
        (32.0, "Terminated"),
    ]
    assert table.statistics()["retransmissions_sent"] == 10


def test_non_invite_retransmits_every_t2_after_a_provisional() -> None:
    table, txn, req = start("REGISTER")
    run(table, 0.5)
    assert kinds(table.receive(response(req, 100, to_tag=None), None, 0.7)) == ["ResponseReceived"]
    assert txn.state is State.PROCEEDING
    log = run(table, 100.0)
    # The pending Timer E (1.5) still fires; from then on it is reset to T2 (17.1.2.2).
    assert send_times(log, "REGISTER") == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert kinds([a for _, a in log if not isinstance(a, SendRequest)]) == ["Timeout", "Terminated"]


def test_non_invite_tcp_only_timer_f() -> None:
    table, _, _ = start("OPTIONS", dest=TCP_DEST)
    log = run(table, 100.0)
    assert [(t, type(a).__name__) for t, a in log] == [(32.0, "Timeout"), (32.0, "Terminated")]


@pytest.mark.parametrize("status", [200, 202, 302, 404, 500, 603])
def test_non_invite_final_completed_then_timer_k(status: int) -> None:
    table, txn, req = start("OPTIONS")
    final = response(req, status)
    assert table.receive(final, None, 1.0) == [ResponseReceived(txn, final)]
    assert txn.state is State.COMPLETED
    assert txn.ack is None
    assert table.next_deadline() == 6.0  # Timer K = T4
    assert table.receive(response(req, status), None, 2.0) == []  # absorbed
    assert kinds(table.expire(6.0)) == ["Terminated"]


def test_non_invite_final_over_tcp_terminates_at_once() -> None:
    table, txn, req = start("OPTIONS", dest=TCP_DEST)
    final = response(req, 200)
    assert table.receive(final, None, 1.0) == [ResponseReceived(txn, final), Terminated(txn)]


# -- transport errors, CANCEL limit, misuse -----------------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
def test_transport_error_while_waiting_reports_up(method: str) -> None:
    table, txn, _ = start(method)
    assert table.transport_error(txn, 0.1) == [TransportFailed(txn), Terminated(txn)]
    assert len(table) == 0
    assert table.next_deadline() is None
    assert table.transport_error(txn, 0.2) == []  # already gone
    assert table.statistics()["transport_errors"] == 1


def test_transport_error_after_final_only_terminates() -> None:
    table, txn, req = start()
    table.receive(response(req, 200), None, 0.1)
    assert table.transport_error(txn, 0.2) == [Terminated(txn)]


def test_cancel_limits_a_proceeding_invite_to_64_t1() -> None:
    # 9.1: no final response within 64*T1 of the CANCEL: the INVITE client transaction is destroyed.
    table, txn, req = start()
    table.receive(response(req, 180), None, 1.0)
    cancel = request("CANCEL")
    cancel_txn, actions = table.start_client(cancel, UDP_DEST, 10.0)
    assert actions == [SendRequest(cancel, UDP_DEST, cancel_txn)]
    assert txn.deadline("timer_cancel") == 42.0
    table.receive(response(cancel, 200), None, 10.1)  # the CANCEL's own 200
    log = run(table, 100.0)
    assert [(t, type(a).__name__, a.txn is txn) for t, a in log] == [  # type: ignore[union-attr]
        (15.1, "Terminated", False),  # Timer K of the CANCEL
        (42.0, "Timeout", True),
        (42.0, "Terminated", True),
    ]


def test_cancel_limit_stops_when_the_487_arrives() -> None:
    table, txn, req = start()
    table.receive(response(req, 180), None, 1.0)
    table.start_client(request("CANCEL"), UDP_DEST, 2.0)
    actions = table.receive(response(req, 487), None, 3.0)
    assert kinds(actions) == ["ResponseReceived", "SendRequest"]
    assert txn.deadline("timer_cancel") is None
    assert txn.deadline("timer_d") == 35.0


def test_start_client_refuses_ack_bad_branch_and_duplicates() -> None:
    table = TransactionTable()
    with pytest.raises(ValueError):
        table.start_client(request("ACK"), UDP_DEST, 0.0)
    with pytest.raises(ValueError):
        table.start_client(request("INVITE", branch="1234"), UDP_DEST, 0.0)
    with pytest.raises(ValueError):
        table.start_client(request("INVITE", branch=None), UDP_DEST, 0.0)
    table.start_client(request("INVITE"), UDP_DEST, 0.0)
    with pytest.raises(ValueError):
        table.start_client(request("INVITE"), UDP_DEST, 0.0)
    assert len(table) == 1
    assert table.client(BRANCH, "INVITE") is not None


def test_terminate_removes_at_once() -> None:
    table, txn, _ = start()
    assert table.terminate(txn, 1.0) == [Terminated(txn)]
    assert table.terminate(txn, 1.0) == []
    assert table.expire(100.0) == []
    assert len(table) == 0
