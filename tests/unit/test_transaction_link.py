"""Client and server transactions talking through a fake link, with lost messages and many transactions."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.unit.test_transaction_support import Link, request
from trioproxy.sip import Request, Response, make_cancel, make_response
from trioproxy.transaction import (
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    State,
    Terminated,
    Timeout,
)


def lose(line: str, times: int) -> Callable[[Request | Response], bool]:
    """A drop filter losing the first ``times`` messages whose first line is ``line``."""
    left = {"n": times}

    def drop(msg: Request | Response) -> bool:
        first = msg.method if isinstance(msg, Request) else str(msg.status)
        if first == line and left["n"] > 0:
            left["n"] -= 1
            return True
        return False

    return drop


def assert_empty(link: Link) -> None:
    for table in (link.a, link.b):
        assert len(table) == 0
        assert table.next_deadline() is None
        stats = table.statistics()
        assert stats["timers_pending"] == 0
        for kind in ("client_invite", "client_non_invite", "server_invite", "server_non_invite"):
            assert stats[kind] == 0


def test_invite_rejected_over_udp_without_loss() -> None:
    link = Link()
    client = link.start(request(), 0.0)
    server = link.server_txn()
    link.respond(server, make_response(server.request, 180, to_tag="uas"), 0.1)
    link.respond(server, make_response(server.request, 486, to_tag="uas"), 0.2)
    assert [(d, line) for _, d, line, _ in link.wire_log] == [
        ("a->b", "INVITE"),
        ("b->a", "180"),
        ("b->a", "486"),
        ("a->b", "ACK"),
    ]
    assert client.state is State.COMPLETED
    assert server.state is State.CONFIRMED
    assert link.event_kinds("a") == ["ResponseReceived", "ResponseReceived"]
    assert link.event_kinds("b") == ["RequestReceived"]  # the ACK is absorbed
    link.run_until(100.0)
    assert link.wire_log[4:] == []  # nothing retransmitted
    # Timer I (T4) ends the server at 5.2; Timer D (32 s) ends the client at 32.2.
    ends = [(t, side) for t, side, a in link.events if isinstance(a, Terminated)]
    assert ends == [(pytest.approx(5.2), "b"), (pytest.approx(32.2), "a")]
    assert_empty(link)


def test_lost_invites_are_retransmitted_until_one_arrives() -> None:
    link = Link(drop=lose("INVITE", 2))
    link.start(request(), 0.0)
    link.run_until(2.0)
    assert link.sent("a->b", "INVITE") == [0.0, 0.5, 1.5]
    received = [t for t, side, a in link.events if isinstance(a, RequestReceived)]
    assert received == [1.5]
    # The third copy created the server transaction; the fourth (3.5) is a retransmission and gets
    # a 100 Trying from the server transaction itself (17.2.1), which stops Timer A.
    link.run_until(4.0)
    assert link.sent("a->b", "INVITE") == [0.0, 0.5, 1.5, 3.5]
    assert link.sent("b->a", "100") == [3.5]
    assert link.a.next_deadline() is None
    assert link.event_kinds("b") == ["RequestReceived"]


def test_lost_final_is_retransmitted_on_timer_g() -> None:
    link = Link(drop=lose("404", 2))
    link.start(request(), 0.0)
    server = link.server_txn()
    link.respond(server, make_response(server.request, 100), 0.0)  # stops Timer A
    link.respond(server, make_response(server.request, 404, to_tag="uas"), 1.0)
    link.run_until(100.0)
    assert link.sent("b->a", "404") == [1.0, 1.5, 2.5]
    assert link.sent("a->b", "ACK") == [2.5]
    assert [type(a).__name__ for _, s, a in link.events if s == "a"] == [
        "ResponseReceived",
        "ResponseReceived",
        "Terminated",
    ]
    assert_empty(link)


def test_lost_acks_make_the_server_retransmit_and_the_client_re_ack() -> None:
    link = Link(drop=lose("ACK", 3))
    link.start(request(), 0.0)
    server = link.server_txn()
    link.respond(server, make_response(server.request, 603, to_tag="uas"), 0.0)
    link.run_until(10.0)
    # Timer G retransmits the 603 at T1, 2T1, 4T1 after it; each copy is ACKed again (17.1.1.2).
    assert link.sent("b->a", "603") == [0.0, 0.5, 1.5, 3.5]
    assert link.sent("a->b", "ACK") == [0.0, 0.5, 1.5, 3.5]
    assert server.state is State.TERMINATED  # Confirmed at 3.5, Timer I = 5 s
    assert link.b.statistics()["retransmissions_sent"] == 3
    assert link.a.statistics()["retransmissions_sent"] == 3  # re-sent ACKs
    assert [a.response.status for _, s, a in link.events if isinstance(a, ResponseReceived)] == [603]
    link.run_until(100.0)
    assert_empty(link)


def test_2xx_every_copy_reaches_the_client_tu_and_both_sides_wait_l_and_m() -> None:
    link = Link()
    client = link.start(request(), 0.0)
    server = link.server_txn()
    invite = server.request
    assert invite is not None
    link.respond(server, make_response(invite, 200, to_tag="fork-1"), 1.0)
    assert server.request is None  # Accepted lingers: the TU keeps what it still needs
    link.respond(server, make_response(invite, 200, to_tag="fork-1"), 1.5)  # TU retransmits
    link.respond(server, make_response(invite, 200, to_tag="fork-2"), 2.0)  # another fork
    assert (client.state, server.state) == (State.ACCEPTED, State.ACCEPTED)
    tags = [a.response.to.tag for _, s, a in link.events if isinstance(a, ResponseReceived)]
    assert tags == ["fork-1", "fork-1", "fork-2"]
    assert link.sent("a->b", "ACK") == []  # the 2xx ACK is end to end, not the transaction's
    link.run_until(100.0)
    assert link.sent("b->a", "200") == [1.0, 1.5, 2.0]  # never retransmitted by the transaction
    ends = [(t, s) for t, s, a in link.events if isinstance(a, Terminated)]
    assert ends == [(33.0, "a"), (33.0, "b")]
    assert_empty(link)


@pytest.mark.parametrize("reliable", [False, True])
def test_non_invite_with_lost_response(reliable: bool) -> None:
    link = Link(reliable=reliable, drop=lose("200", 0 if reliable else 1))
    client = link.start(request("OPTIONS"), 0.0)
    server = link.server_txn()
    link.respond(server, make_response(server.request, 200, to_tag="uas"), 0.2)
    link.run_until(100.0)
    if reliable:
        assert link.sent("a->b", "OPTIONS") == [0.0]
        assert link.sent("b->a", "200") == [0.2]
    else:
        # The client's Timer E copy at 0.5 makes the Completed server send the 200 again.
        assert link.sent("a->b", "OPTIONS") == [0.0, 0.5]
        assert link.sent("b->a", "200") == [0.2, 0.5]
    assert client.state is State.TERMINATED
    assert [type(a).__name__ for _, s, a in link.events if s == "a"] == ["ResponseReceived", "Terminated"]
    assert_empty(link)


def test_reliable_link_never_retransmits_and_ends_at_once() -> None:
    link = Link(reliable=True, drop=lambda msg: False)
    link.start(request(), 0.0)
    server = link.server_txn()
    link.respond(server, make_response(server.request, 486, to_tag="uas"), 0.5)
    # Timer D and Timer I are 0 over reliable transports: both ended within the same call.
    assert_empty(link)
    assert [line for _, _, line, _ in link.wire_log] == ["INVITE", "486", "ACK"]


def test_unanswered_invite_times_out_on_both_sides_differently() -> None:
    link = Link(drop=lambda msg: isinstance(msg, Request))  # the INVITE never arrives
    link.start(request(), 0.0)
    link.run_until(100.0)
    assert link.sent("a->b", "INVITE") == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [(t, type(a).__name__) for t, s, a in link.events] == [(32.0, "Timeout"), (32.0, "Terminated")]
    assert_empty(link)


def test_cancel_through_the_link() -> None:
    link = Link()
    invite_req = request()
    client = link.start(invite_req, 0.0)
    server = link.server_txn()
    link.respond(server, make_response(server.request, 180, to_tag="uas"), 0.1)
    cancel_client = link.start(make_cancel(invite_req), 1.0)
    (cancel_event,) = [a for _, _, a in link.events if isinstance(a, CancelReceived)]
    assert cancel_event.server_txn is server
    link.respond(cancel_event.cancel_txn, make_response(cancel_event.cancel, 200, to_tag="uas"), 1.0)
    link.respond(server, make_response(server.request, 487, to_tag="uas"), 1.0)
    statuses = [
        (a.txn is client, a.response.status) for _, s, a in link.events if isinstance(a, ResponseReceived)
    ]
    assert statuses == [(True, 180), (False, 200), (True, 487)]
    assert cancel_client.state is State.COMPLETED
    assert (client.state, server.state) == (State.COMPLETED, State.CONFIRMED)
    link.run_until(100.0)
    assert not [a for _, _, a in link.events if isinstance(a, Timeout)]
    assert_empty(link)


def test_thousands_of_transactions_with_random_loss_leave_both_tables_empty() -> None:
    rng = random.Random(3261)
    finals = [200, 404, 486, 603, 202, 500]

    def uas(req: Request) -> Response:
        return make_response(req, finals[req.cseq.seq % len(finals)], to_tag="uas")

    link = Link(drop=lambda msg: rng.random() < 0.2, uas=uas)
    methods = ["INVITE", "OPTIONS", "REGISTER", "INVITE"]
    now = 0.0
    for i in range(2000):
        now = i * 0.01
        link.run_until(now)
        link.start(request(methods[i % 4], branch=f"z9hG4bK-load-{i}", cseq=i + 1), now)
    assert len(link.a) > 0
    link.run_until(now + 200.0)
    assert_empty(link)
    stats_a, stats_b = link.a.statistics(), link.b.statistics()
    assert stats_a["clients_created"] == 2000
    assert stats_a["terminated"] == 2000
    assert stats_b["terminated"] == stats_b["servers_created"]
    assert stats_a["retransmissions_sent"] > 0
    assert len(link.a._heap) == 0 and len(link.b._heap) == 0
    # Every transaction ended exactly once; every client saw a final response or a timeout first.
    ended = [id(a.txn) for _, _, a in link.events if isinstance(a, Terminated)]
    assert len(ended) == len(set(ended)) == 2000 + stats_b["servers_created"]
    outcome: dict[int, str] = {}
    for _, side, a in link.events:
        if side == "a" and isinstance(a, Timeout | ResponseReceived) and id(a.txn) not in outcome:
            final = isinstance(a, Timeout) or a.response.status >= 200
            if final:
                outcome[id(a.txn)] = type(a).__name__
    assert len(outcome) == 2000
    assert stats_a["timeouts"] == list(outcome.values()).count("Timeout")


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    # 5000 INVITEs answered at once by a 180: Timer A and B are cancelled for each (lazy deletion);
    # compaction keeps the heap proportional to the live timers.
    link = Link()
    for i in range(5000):
        client = link.start(request(branch=f"z9hG4bK-heap-{i}"), 0.0)
        link.a.receive(
            make_response(client.request, 180, to_tag="t"), None, 0.001
        )  # straight to the client table
    assert link.a.statistics()["timers_pending"] == 0
    assert len(link.a._heap) <= 2 * 1024 + 2
    assert link.a.next_deadline() is None
