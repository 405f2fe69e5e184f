"""Lingering transactions keep only what absorbing retransmissions needs (txn.py), and still absorb them.

Every kind of transaction is driven into each state it lingers in (INVITE server Completed, Confirmed,
Accepted; non-INVITE server Completed; INVITE client Completed, Accepted; non-INVITE client Completed);
then what the table still reaches is walked (without entering the TU's ``user`` objects) and measured with
tracemalloc, and retransmissions are fed to check what goes on the wire.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

from tests.unit.test_transaction_support import UDP, UDP_DEST, request, response
from trioproxy.sip import Message, Request, Response, make_response
from trioproxy.transaction import (
    ClientTransaction,
    ResponseReceived,
    SendRequest,
    SendResponse,
    ServerTransaction,
    State,
    TransactionTable,
)


class Owner:
    """What a TU attaches to a client transaction (the proxy's branch): opaque to the table."""


def fill(table: TransactionTable, n: int, now: float = 0.0) -> list[Owner]:
    """``n`` transactions of each lingering kind and state; returns the owners given to client transactions."""
    owners: list[Owner] = []
    for i in range(n):
        # INVITE server: Accepted (2xx), Completed (486, no ACK yet), Confirmed (486 then ACK).
        for status, acked, tag in ((200, False, "ok"), (486, False, "busy"), (486, True, "conf")):
            req = request("INVITE", f"z9hG4bK-s{tag}-{i}", call_id=f"s{tag}{i}")
            server = _new_server(table, req, now)
            table.respond(server, make_response(req, status, to_tag=tag), now)
            if acked:
                table.receive(
                    request("ACK", f"z9hG4bK-s{tag}-{i}", call_id=f"s{tag}{i}", to_tag=tag), UDP, now
                )
        # Non-INVITE server: Completed.
        bye = request("BYE", f"z9hG4bK-sbye-{i}", call_id=f"sbye{i}", to_tag="t")
        table.respond(_new_server(table, bye, now), make_response(bye, 200), now)
        # Clients: INVITE Accepted (2xx), INVITE Completed (486), non-INVITE Completed (200).
        for method, status, tag in (("INVITE", 200, "cok"), ("INVITE", 486, "cbusy"), ("BYE", 200, "cbye")):
            owner = Owner()
            owners.append(owner)
            req = request(method, f"z9hG4bK-{tag}-{i}", call_id=f"{tag}{i}")
            _txn, _ = table.start_client(req, UDP_DEST, now, user=owner)
            table.receive(response(req, status, to_tag=tag), None, now)
    table.expire(now)  # any later call lets go of the owners of Completed client transactions
    return owners


def _new_server(table: TransactionTable, req: Request, now: float) -> ServerTransaction:
    (action,) = table.receive(req, UDP, now)
    txn = getattr(action, "txn", None)
    assert isinstance(txn, ServerTransaction)
    return txn


def reachable(table: TransactionTable, owners: list[Owner]) -> Iterator[object]:
    """Every object the table reaches, not entering the TU's owners (they are the TU's to slim)."""
    stop = {id(o) for o in owners}
    seen: set[int] = set()
    todo: list[object] = [table]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, type):
            continue
        seen.add(id(obj))
        yield obj
        todo.extend(gc.get_referents(obj))
        for name in getattr(type(obj), "__slots__", ()):
            todo.append(getattr(obj, name, None))


def test_lingering_transactions_hold_no_messages() -> None:
    table = TransactionTable()
    owners = fill(table, 20)
    stats = table.statistics()
    assert (stats["server_invite"], stats["server_non_invite"]) == (60, 20)
    assert (stats["client_invite"], stats["client_non_invite"]) == (40, 20)
    found = [o for o in reachable(table, owners) if isinstance(o, Message)]
    assert found == []
    for txn in (o for o in reachable(table, owners) if isinstance(o, ServerTransaction | ClientTransaction)):
        assert txn.state in (State.COMPLETED, State.CONFIRMED, State.ACCEPTED)
        assert txn.request is None
        if isinstance(txn, ServerTransaction):
            assert txn.last_response is None
            assert (txn.sent is not None) == (txn.state is State.COMPLETED)  # kept only where it is resent
        else:
            # Only Accepted still passes a 2xx up to its owner.
            assert (txn.user is not None) == (txn.state is State.ACCEPTED)
            assert (txn.ack is not None) == (txn.state is State.COMPLETED and txn.invite)


def test_lingering_transactions_are_small() -> None:
    n = 200
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = TransactionTable()
        owners = fill(table, n)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del owners
    per_txn = held / len(table)
    # The key, the timers, and the bytes of a response or an ACK where they may be resent; a parsed
    # request alone (its lines, header caches, URI) costs more than this (3.2 KB each when they kept it).
    assert per_txn < 1200, f"{per_txn:.0f} bytes per lingering transaction"


def test_completed_server_resends_the_same_bytes_after_lingering() -> None:
    table = TransactionTable()
    bye = request("BYE", "z9hG4bK-resend", to_tag="t")
    server = _new_server(table, bye, 0.0)
    ok = make_response(bye, 200, to_tag="t")
    wire = ok.to_bytes()
    (sent,) = table.respond(server, ok, 0.0)
    assert isinstance(sent, SendResponse) and sent.msg is ok
    del ok, sent
    for t in (1.0, 2.0):
        (again,) = table.receive(request("BYE", "z9hG4bK-resend", to_tag="t"), UDP, t)
        assert isinstance(again, SendResponse)
        assert again.msg.to_bytes() == wire and again.flow is UDP and again.txn is server
    assert table.statistics()["retransmissions_sent"] == 2


def test_invite_server_timer_g_resends_the_kept_bytes_until_the_ack() -> None:
    table = TransactionTable()
    invite = request("INVITE", "z9hG4bK-g")
    server = _new_server(table, invite, 0.0)
    wire = make_response(invite, 486, to_tag="b").to_bytes()
    table.respond(server, make_response(invite, 486, to_tag="b"), 0.0)
    resent = [a for a in table.expire(0.5) + table.expire(1.5) if isinstance(a, SendResponse)]
    assert [a.msg.to_bytes() for a in resent] == [wire, wire]
    assert [a.msg.status for a in resent] == [486, 486]
    assert table.receive(request("ACK", "z9hG4bK-g", to_tag="b"), UDP, 2.0) == []
    assert server.state is State.CONFIRMED and server.sent is None
    assert table.receive(request("INVITE", "z9hG4bK-g"), UDP, 2.5) == []  # Confirmed absorbs


def test_completed_client_resends_its_ack_and_lets_go_of_its_owner() -> None:
    table = TransactionTable()
    owner = Owner()
    invite = request("INVITE", "z9hG4bK-c")
    txn, _ = table.start_client(invite, UDP_DEST, 0.0, user=owner)
    first = table.receive(response(invite, 486, to_tag="x"), None, 0.1)
    up, ack = first
    # The final goes up while the owner is still attached: the TU finds it through txn.user.
    assert isinstance(up, ResponseReceived) and up.txn.user is owner
    assert isinstance(ack, SendRequest) and ack.msg.method == "ACK"
    wire = ack.msg.to_bytes()
    (again,) = table.receive(response(invite, 486, to_tag="x"), None, 0.5)
    assert isinstance(again, SendRequest) and again.msg.to_bytes() == wire and again.dest == UDP_DEST
    assert txn.user is None and txn.request is None


def test_accepted_client_keeps_its_owner_for_every_2xx() -> None:
    table = TransactionTable()
    owner = Owner()
    invite = request("INVITE", "z9hG4bK-a")
    txn, _ = table.start_client(invite, UDP_DEST, 0.0, user=owner)
    for t, tag in ((0.1, "one"), (0.6, "one"), (1.0, "two")):
        (up,) = table.receive(response(invite, 200, to_tag=tag), None, t)
        assert isinstance(up, ResponseReceived) and up.txn.user is owner
        assert isinstance(up.response, Response) and up.response.to.tag == tag
    assert txn.state is State.ACCEPTED and txn.request is None


def test_rfc_2543_ack_matches_a_lingering_transaction_by_the_sent_to_tag() -> None:
    table = TransactionTable()
    invite = request("INVITE", None)
    server = _new_server(table, invite, 0.0)
    table.respond(server, make_response(invite, 404, to_tag="nf"), 0.0)
    assert server.request is None
    # An ACK with another To tag is not this transaction's: it goes up; the right one confirms it.
    assert [type(a).__name__ for a in table.receive(request("ACK", None, to_tag="other"), UDP, 0.1)] == [
        "AckReceived"
    ]
    assert table.receive(request("ACK", None, to_tag="nf"), UDP, 0.2) == []
    assert server.state is State.CONFIRMED
