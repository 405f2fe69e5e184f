"""Server transactions (RFC 3261 17.2, RFC 6026 Accepted) driven by hand with explicit times."""

from __future__ import annotations

import pytest

from tests.unit.test_transaction_support import TCP, UDP, FakeFlow, kinds, on_wire, request
from trioproxy.sip import Request, Response, make_response
from trioproxy.transaction import (
    AckReceived,
    RequestReceived,
    SendResponse,
    ServerTransaction,
    State,
    Terminated,
    TransactionTable,
)
from trioproxy.transaction.actions import Action


def receive_new(
    method: str = "INVITE", flow: FakeFlow = UDP, now: float = 0.0
) -> tuple[TransactionTable, ServerTransaction, Request]:
    table = TransactionTable()
    req = request(method)
    actions = table.receive(req, flow, now)
    assert len(actions) == 1
    action = actions[0]
    assert isinstance(action, RequestReceived)
    assert action.request is req
    txn = action.txn
    assert txn.request is req
    assert txn.flow is flow
    assert txn.user is None
    return table, txn, req


def run(table: TransactionTable, end: float) -> list[tuple[float, Action]]:
    out: list[tuple[float, Action]] = []
    while (deadline := table.next_deadline()) is not None and deadline <= end:
        out += [(deadline, a) for a in table.expire(deadline)]
    return out


def answer(req: Request, status: int) -> Response:
    return make_response(req, status, to_tag="uas-tag")


# -- INVITE server ------------------------------------------------------------------------------


def test_new_invite_is_passed_up_in_proceeding() -> None:
    table, txn, _ = receive_new()
    assert txn.state is State.PROCEEDING
    assert table.next_deadline() is None
    stats = table.statistics()
    assert (stats["server_invite"], stats["servers_created"]) == (1, 1)


def test_retransmitted_invite_before_any_answer_gets_100_trying() -> None:
    table, _txn, req = receive_new()
    actions = table.receive(request("INVITE"), UDP, 0.5)
    assert kinds(actions) == ["SendResponse"]
    trying = actions[0].msg  # type: ignore[union-attr]
    assert isinstance(trying, Response)
    assert trying.status == 100
    assert trying.to.tag is None
    assert trying.top_via.branch == req.top_via.branch
    assert table.statistics()["retransmissions_received"] == 1


def test_retransmitted_invite_resends_last_provisional() -> None:
    table, txn, req = receive_new()
    ringing = answer(req, 180)
    assert table.respond(txn, ringing, 0.1) == [SendResponse(ringing, UDP, txn)]
    assert txn.last_response is ringing
    assert table.receive(request("INVITE"), UDP, 0.6) == [SendResponse(ringing, UDP, txn)]
    progress = answer(req, 183)
    table.respond(txn, progress, 0.7)
    assert table.receive(request("INVITE"), UDP, 1.6) == [SendResponse(progress, UDP, txn)]
    assert txn.state is State.PROCEEDING


def test_non_2xx_retransmitted_on_timer_g_until_timer_h() -> None:
    table, txn, req = receive_new()
    busy = answer(req, 486)
    assert table.respond(txn, busy, 1.0) == [SendResponse(busy, UDP, txn)]
    assert txn.state is State.COMPLETED
    log = run(table, 100.0)
    # 17.2.1: Timer G at T1, doubling up to T2; Timer H at 64*T1 ends it without an ACK.
    resends = [t - 1.0 for t, a in log if isinstance(a, SendResponse)]
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(a.msg.to_bytes() == busy.to_bytes() for _, a in log if isinstance(a, SendResponse))
    assert [(t, type(a).__name__) for t, a in log if not isinstance(a, SendResponse)] == [
        (33.0, "Terminated")
    ]
    stats = table.statistics()
    assert (stats["ack_timeouts"], stats["retransmissions_sent"], stats["server_invite"]) == (1, 10, 0)


def test_non_2xx_over_tcp_no_timer_g() -> None:
    table, txn, req = receive_new(flow=TCP)
    table.respond(txn, answer(req, 404), 1.0)
    assert table.next_deadline() == 33.0
    assert [(t, type(a).__name__) for t, a in run(table, 100.0)] == [(33.0, "Terminated")]


def test_ack_for_non_2xx_is_absorbed_then_timer_i() -> None:
    table, txn, req = receive_new()
    busy = answer(req, 486)
    table.respond(txn, busy, 1.0)
    assert on_wire(table.receive(request("INVITE"), UDP, 1.2)) == on_wire([SendResponse(busy, UDP, txn)])
    ack = request("ACK", to_tag="uas-tag")
    assert table.receive(ack, UDP, 2.0) == []
    assert txn.state is State.CONFIRMED
    assert txn.deadline("timer_g") is None and txn.deadline("timer_h") is None
    assert table.next_deadline() == 7.0  # Timer I = T4
    # Confirmed absorbs ACK and INVITE retransmissions.
    assert table.receive(request("ACK", to_tag="uas-tag"), UDP, 3.0) == []
    assert table.receive(request("INVITE"), UDP, 3.0) == []
    assert kinds(table.expire(7.0)) == ["Terminated"]
    assert len(table) == 0


def test_ack_for_non_2xx_over_tcp_terminates_at_once() -> None:
    table, txn, req = receive_new(flow=TCP)
    table.respond(txn, answer(req, 486), 1.0)
    assert table.receive(request("ACK", to_tag="uas-tag"), TCP, 1.5) == [Terminated(txn)]
    assert table.next_deadline() is None


def test_2xx_goes_to_accepted_without_retransmitting_it() -> None:
    table, txn, req = receive_new()
    ok = answer(req, 200)
    assert table.respond(txn, ok, 1.0) == [SendResponse(ok, UDP, txn)]
    assert txn.state is State.ACCEPTED
    assert table.next_deadline() == 33.0  # Timer L = 64*T1
    # RFC 6026 7.1: INVITE retransmissions absorbed; further 2xx from the TU sent; ACK passed up.
    assert table.receive(request("INVITE"), UDP, 2.0) == []
    ok2 = make_response(req, 200, to_tag="other-fork")
    assert table.respond(txn, ok2, 3.0) == [SendResponse(ok2, UDP, txn)]
    assert table.respond(txn, answer(req, 486), 3.5) == []
    assert table.respond(txn, answer(req, 180), 3.5) == []
    ack = request("ACK", to_tag="uas-tag")
    assert table.receive(ack, TCP, 4.0) == [AckReceived(ack, TCP)]
    log = run(table, 100.0)
    assert [(t, type(a).__name__) for t, a in log] == [(33.0, "Terminated")]


@pytest.mark.parametrize(
    ("final", "later", "sent"),
    [
        (486, 183, False),
        (486, 404, False),
        (486, 200, False),
        (200, 183, False),
        (200, 404, False),
        (200, 202, True),
    ],
)
def test_tu_responses_after_a_final(final: int, later: int, sent: bool) -> None:
    table, txn, req = receive_new()
    table.respond(txn, answer(req, final), 1.0)
    late = answer(req, later)
    assert table.respond(txn, late, 1.1) == ([SendResponse(late, UDP, txn)] if sent else [])


def test_respond_refuses_bad_status_and_ignores_ended_transactions() -> None:
    table, txn, req = receive_new()
    with pytest.raises(ValueError):
        table.respond(txn, answer(req, 700), 0.0)
    assert table.transport_error(txn, 0.5) == [Terminated(txn)]
    assert table.respond(txn, answer(req, 200), 1.0) == []
    assert len(table) == 0


# -- non-INVITE server ---------------------------------------------------------------------------


def test_non_invite_trying_discards_retransmissions() -> None:
    table, txn, _ = receive_new("OPTIONS")
    assert txn.state is State.TRYING
    assert table.receive(request("OPTIONS"), UDP, 0.5) == []  # 17.2.2: "MUST be discarded"


def test_non_invite_final_then_timer_j_udp() -> None:
    table, txn, req = receive_new("OPTIONS")
    ok = answer(req, 200)
    assert table.respond(txn, ok, 1.0) == [SendResponse(ok, UDP, txn)]
    assert txn.state is State.COMPLETED
    assert on_wire(table.receive(request("OPTIONS"), UDP, 2.0)) == on_wire([SendResponse(ok, UDP, txn)])
    assert table.respond(txn, answer(req, 404), 2.5) == []
    assert table.next_deadline() == 33.0  # Timer J = 64*T1 over UDP
    assert [(t, type(a).__name__) for t, a in run(table, 100.0)] == [(33.0, "Terminated")]


def test_non_invite_final_over_tcp_terminates_at_once() -> None:
    table, txn, req = receive_new("REGISTER", flow=TCP)
    ok = answer(req, 200)
    assert table.respond(txn, ok, 1.0) == [SendResponse(ok, TCP, txn), Terminated(txn)]
    assert len(table) == 0


def test_non_invite_proceeding_resends_provisional() -> None:
    table, txn, req = receive_new("SUBSCRIBE")
    trying = make_response(req, 100)
    assert table.respond(txn, trying, 3.5) == [SendResponse(trying, UDP, txn)]
    assert txn.state is State.PROCEEDING
    assert table.receive(request("SUBSCRIBE"), UDP, 7.5) == [SendResponse(trying, UDP, txn)]
    ok = answer(req, 202)
    table.respond(txn, ok, 8.0)
    assert on_wire(table.receive(request("SUBSCRIBE"), UDP, 11.5)) == on_wire([SendResponse(ok, UDP, txn)])


@pytest.mark.parametrize(
    ("flow", "status", "at", "sent"),
    [
        # RFC 4320 4.1: a 100 over UDP only once the client's Timer E is at T2 (0.5 + 1 + 2 = 3.5 s).
        (UDP, 100, 3.49, False),
        (UDP, 100, 3.5, True),
        (TCP, 100, 0.1, True),
        # No provisional other than 100, on any transport.
        (UDP, 180, 10.0, False),
        (TCP, 183, 10.0, False),
        # RFC 4320 4.2: never a 408 to a non-INVITE.
        (UDP, 408, 10.0, False),
        (TCP, 408, 10.0, False),
        (UDP, 404, 0.1, True),
    ],
)
def test_rfc_4320_non_invite_responses(flow: FakeFlow, status: int, at: float, sent: bool) -> None:
    table, txn, req = receive_new("OPTIONS", flow=flow)
    resp = answer(req, status)
    actions = table.respond(txn, resp, at)
    assert (SendResponse(resp, flow, txn) in actions) is sent
    assert table.statistics()["suppressed"] == (0 if sent else 1)
    if not sent:
        assert txn.state is State.TRYING


def test_rfc_4320_rules_do_not_touch_invite() -> None:
    table, txn, req = receive_new("INVITE")
    for status in (100, 180, 183):
        resp = answer(req, status)
        assert table.respond(txn, resp, 0.0) == [SendResponse(resp, UDP, txn)]
    final = answer(req, 408)
    assert table.respond(txn, final, 0.1) == [SendResponse(final, UDP, txn)]


@pytest.mark.parametrize("provisional", [False, True])
def test_unanswered_non_invite_ends_after_64_t1(provisional: bool) -> None:
    # RFC 4320: no 408 is sent; once the client's Timer F has fired no answer helps, so it lapses.
    table, txn, req = receive_new("OPTIONS", now=2.0)
    if provisional:
        table.respond(txn, make_response(req, 100), 6.0)
        assert txn.state is State.PROCEEDING
    assert table.next_deadline() == 34.0
    assert [(t, type(a).__name__) for t, a in run(table, 100.0)] == [(34.0, "Terminated")]
    assert table.respond(txn, answer(req, 200), 35.0) == []


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"])
@pytest.mark.parametrize("status", [None, 180, 486, 200])
def test_transport_error_terminates_server_transactions(method: str, status: int | None) -> None:
    table, txn, req = receive_new(method)
    if status is not None:
        table.respond(txn, answer(req, status), 0.1)
    assert table.transport_error(txn, 0.2) == [Terminated(txn)]
    assert len(table) == 0
    assert table.next_deadline() is None
