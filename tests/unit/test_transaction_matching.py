"""Matching (RFC 3261 17.1.3, 17.2.3, 9.2), the RFC 2543 fallback, ACK and CANCEL, stray responses."""

from __future__ import annotations

import pytest

from tests.unit.test_transaction_support import BRANCH, TCP, UDP, UDP_DEST, kinds, on_wire, request, response
from trioproxy.sip import Request, SIPError, make_response, parse_message_untrusted
from trioproxy.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    SendResponse,
    ServerTransaction,
    State,
    StrayResponse,
    TransactionTable,
    server_key,
)


def new_server(table: TransactionTable, req: Request, now: float = 0.0) -> ServerTransaction:
    actions = table.receive(req, UDP, now)
    assert kinds(actions) == ["RequestReceived"]
    action = actions[0]
    assert isinstance(action, RequestReceived)
    return action.txn


# -- server keys (17.2.3) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ({}, {}, True),
        ({}, {"via": "192.0.2.10"}, True),  # default port 5060
        ({}, {"via": "192.0.2.10:5070"}, False),  # sent-by differs
        ({}, {"via": "192.0.2.11:5060"}, False),
        ({"via": "Host.Example.COM"}, {"via": "host.example.com:5060"}, True),
        ({}, {"branch": "z9hG4bK-other"}, False),
        ({}, {"method": "OPTIONS"}, False),  # method differs
        ({"method": "ACK"}, {"method": "INVITE"}, True),  # ACK matches the INVITE
        ({}, {"cseq": 2, "call_id": "x", "from_tag": "y"}, True),  # only branch, sent-by, method count
        ({"transport": "TLS", "via": "192.0.2.10"}, {"transport": "TLS", "via": "192.0.2.10:5061"}, True),
    ],
)
def test_server_key_rfc_3261(first: dict[str, object], second: dict[str, object], same: bool) -> None:
    assert (server_key(request(**first)) == server_key(request(**second))) is same  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({}, True),
        ({"cseq": 2}, False),
        ({"call_id": "other"}, False),
        ({"from_tag": "other"}, False),
        ({"uri": "sip:carol@example.com"}, False),
        ({"via": "192.0.2.10:5070"}, False),
        ({"method": "ACK", "to_tag": "t"}, True),  # the table compares the To tag itself
        ({"method": "OPTIONS"}, False),
    ],
)
@pytest.mark.parametrize("branch", [None, "1234abc"])  # no branch, or one without the magic cookie
def test_server_key_rfc_2543_fallback(branch: str | None, change: dict[str, object], same: bool) -> None:
    base = server_key(request(branch=branch))
    assert base[0] == "2543"
    assert (server_key(request(branch=branch, **change)) == base) is same  # type: ignore[arg-type]


def test_request_without_via_is_a_400() -> None:
    msg = parse_message_untrusted(
        b"OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    with pytest.raises(SIPError) as err:
        TransactionTable().receive(msg, UDP, 0.0)
    assert err.value.status == 400


def test_same_branch_from_two_clients_is_two_transactions() -> None:
    table = TransactionTable()
    one = new_server(table, request(via="192.0.2.10:5060"))
    two = new_server(table, request(via="192.0.2.99:5060"))
    assert one is not two
    assert len(table) == 2
    assert table.server(request(via="192.0.2.99:5060")) is two


# -- ACK (17.2.3, RFC 6026) ----------------------------------------------------------------------


def test_ack_without_transaction_goes_up() -> None:
    table = TransactionTable()
    ack = request("ACK", to_tag="x")
    assert table.receive(ack, TCP, 0.0) == [AckReceived(ack, TCP)]
    assert len(table) == 0


def test_ack_for_2xx_with_new_branch_goes_up_and_leaves_the_invite_alone() -> None:
    table = TransactionTable()
    txn = new_server(table, request())
    table.respond(txn, make_response(txn.request, 200, to_tag="t"), 1.0)
    ack = request("ACK", branch="z9hG4bK-ack-for-2xx", to_tag="t")
    assert table.receive(ack, UDP, 2.0) == [AckReceived(ack, UDP)]
    assert txn.state is State.ACCEPTED


def test_ack_in_proceeding_is_absorbed() -> None:
    table = TransactionTable()
    txn = new_server(table, request())
    assert table.receive(request("ACK"), UDP, 1.0) == []
    assert txn.state is State.PROCEEDING


# -- CANCEL (9.2) --------------------------------------------------------------------------------


def test_cancel_finds_the_invite_and_gets_its_own_transaction() -> None:
    table = TransactionTable()
    invite = new_server(table, request())
    cancel = request("CANCEL")
    actions = table.receive(cancel, UDP, 1.0)
    assert len(actions) == 1
    event = actions[0]
    assert isinstance(event, CancelReceived)
    assert (event.cancel, event.flow, event.server_txn) == (cancel, UDP, invite)
    cancel_txn = event.cancel_txn
    assert cancel_txn is not invite
    assert cancel_txn.request is cancel
    assert cancel_txn.state is State.TRYING
    assert invite.state is State.PROCEEDING  # the TU decides (487 after cancelling its branches)
    ok = make_response(cancel, 200)
    assert table.respond(cancel_txn, ok, 1.1) == [SendResponse(ok, UDP, cancel_txn)]
    # A retransmitted CANCEL re-sends the 200 and does not reach the TU again.
    assert on_wire(table.receive(request("CANCEL"), UDP, 1.5)) == on_wire([SendResponse(ok, UDP, cancel_txn)])
    assert table.statistics()["server_non_invite"] == 1


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({}, True),
        ({"branch": "z9hG4bK-other"}, False),
        ({"via": "192.0.2.10:5070"}, False),
    ],
)
def test_cancel_matching_rfc_3261(change: dict[str, object], found: bool) -> None:
    table = TransactionTable()
    invite = new_server(table, request())
    (event,) = table.receive(request("CANCEL", **change), UDP, 1.0)  # type: ignore[arg-type]
    assert isinstance(event, CancelReceived)
    assert event.server_txn is (invite if found else None)


def test_cancel_without_invite_still_gets_a_transaction() -> None:
    table = TransactionTable()
    (event,) = table.receive(request("CANCEL"), UDP, 0.0)
    assert isinstance(event, CancelReceived)
    assert event.server_txn is None
    assert len(table) == 1
    # Forwarded statelessly (16.10) and never answered, it lapses after 64*T1.
    assert kinds(table.expire(32.0)) == ["Terminated"]
    assert len(table) == 0


def test_cancel_after_the_final_response_still_finds_the_invite() -> None:
    table = TransactionTable()
    invite = new_server(table, request())
    table.respond(invite, make_response(invite.request, 486, to_tag="t"), 0.5)
    (event,) = table.receive(request("CANCEL"), UDP, 1.0)
    assert isinstance(event, CancelReceived)
    assert event.server_txn is invite


# -- the RFC 2543 fallback -----------------------------------------------------------------------


def test_rfc_2543_retransmission_and_ack() -> None:
    table = TransactionTable()
    txn = new_server(table, request(branch=None))
    busy = make_response(txn.request, 486, to_tag="uas")
    table.respond(txn, busy, 0.5)
    assert on_wire(table.receive(request(branch=None), UDP, 1.0)) == on_wire([SendResponse(busy, UDP, txn)])
    # An ACK with another To tag does not match (17.2.3): it goes up.
    stray_ack = request("ACK", branch=None, to_tag="someone-else")
    assert table.receive(stray_ack, UDP, 1.5) == [AckReceived(stray_ack, UDP)]
    assert txn.state is State.COMPLETED
    assert table.receive(request("ACK", branch=None, to_tag="uas"), UDP, 2.0) == []
    assert txn.state is State.CONFIRMED


def test_rfc_2543_ack_for_2xx_goes_up_through_accepted() -> None:
    table = TransactionTable()
    txn = new_server(table, request(branch=None))
    table.respond(txn, make_response(txn.request, 200, to_tag="uas"), 0.5)
    ack = request("ACK", branch=None, to_tag="uas")
    assert table.receive(ack, UDP, 1.0) == [AckReceived(ack, UDP)]
    assert txn.state is State.ACCEPTED


def test_rfc_2543_new_cseq_is_a_new_transaction() -> None:
    table = TransactionTable()
    first = new_server(table, request(branch=None))
    second = new_server(table, request(branch=None, cseq=2))
    assert first is not second


@pytest.mark.parametrize(("to_tag", "found"), [(None, True), ("wrong", False)])
def test_rfc_2543_cancel(to_tag: str | None, found: bool) -> None:
    table = TransactionTable()
    invite = new_server(table, request(branch=None))
    (event,) = table.receive(request("CANCEL", branch=None, to_tag=to_tag), UDP, 1.0)
    assert isinstance(event, CancelReceived)
    assert event.server_txn is (invite if found else None)


# -- responses (17.1.3) --------------------------------------------------------------------------


def test_response_matches_branch_and_cseq_method() -> None:
    table = TransactionTable()
    invite_req = request()
    invite, _ = table.start_client(invite_req, UDP_DEST, 0.0)
    cancel_req = request("CANCEL")
    cancel, _ = table.start_client(cancel_req, UDP_DEST, 0.1)
    ok_cancel = response(cancel_req, 200)
    assert table.receive(ok_cancel, None, 0.2) == [ResponseReceived(cancel, ok_cancel)]
    terminated = response(invite_req, 487)
    assert kinds(table.receive(terminated, None, 0.3)) == ["ResponseReceived", "SendRequest"]
    assert invite.state is State.COMPLETED


@pytest.mark.parametrize(
    "resp_for",
    [
        {"branch": "z9hG4bK-unknown"},
        {"branch": None},
        {"cseq_method": "OPTIONS"},  # CSeq method differs from the transaction's
        {"branch": "1234-no-cookie"},
    ],
)
def test_unmatched_responses_are_stray(resp_for: dict[str, object]) -> None:
    table = TransactionTable()
    table.start_client(request(), UDP_DEST, 0.0)
    resp = response(request(**resp_for), 200)  # type: ignore[arg-type]
    assert table.receive(resp, None, 1.0) == [StrayResponse(resp)]
    assert table.statistics()["stray_responses"] == 1


def test_response_after_the_transaction_ended_is_stray() -> None:
    table = TransactionTable()
    req = request("OPTIONS")
    table.start_client(req, UDP_DEST, 0.0)
    table.receive(response(req, 200), None, 0.1)
    table.expire(10.0)  # Timer K
    assert len(table) == 0
    late = response(req, 200)
    assert table.receive(late, None, 11.0) == [StrayResponse(late)]


def test_lookup_helpers() -> None:
    table = TransactionTable()
    txn = new_server(table, request())
    assert table.server(request("ACK")) is txn
    assert table.server(request("OPTIONS")) is None
    assert table.client(BRANCH, "INVITE") is None
