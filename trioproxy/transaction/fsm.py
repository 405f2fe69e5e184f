"""The four transaction state machines of RFC 3261 17 (with RFC 6026), written as tables.

Theory of operation
-------------------
A transaction is in one ``State``. Everything that happens to it is an *input*, a short string named
after the RFC figures:

- responses received by a client transaction: ``1xx``, ``2xx``, ``300-699`` (INVITE) or ``1xx``,
  ``200-699`` (non-INVITE);
- responses the TU passes to a server transaction: ``tu_1xx``, ``tu_2xx``, ``tu_300-699`` (INVITE) or
  ``tu_1xx``, ``tu_200-699`` (non-INVITE);
- requests received by a server transaction that already exists: ``request`` (a retransmission) and
  ``ack`` (an ACK matching an INVITE server transaction, 17.2.3);
- ``cancel_sent``: the TU started a CANCEL client transaction for this INVITE client transaction (9.1);
- timer firings: ``timer_a`` ... ``timer_m``, ``timer_cancel``, ``timer_guard`` (see timers.py);
- ``transport_err``: the transport could not send for this transaction (17.1.4, 17.2.4).

A table maps ``(state, input)`` to a ``Step``: the next state and a tuple of *effects* that the table
(table.py) carries out in order. A pair missing from the table means the input is absorbed: nothing is
sent and nothing goes to the TU (for instance a retransmitted final response in Completed of a non-INVITE
client transaction, or an INVITE retransmission in Accepted, RFC 6026 7.1).

Effects:

- ``send``: send the TU's response (server) and remember it as the last response;
- ``resend``: send the last response again (server); in INVITE Proceeding with nothing sent yet it
  sends a 100 Trying instead (17.2.1: the server transaction generates the 100);
- ``retransmit``: send the request again (client);
- ``send_ack`` / ``resend_ack``: build the ACK for a non-2xx final response (17.1.1.3) / send it again;
- ``pass_up``: give the response to the TU (``ResponseReceived``); ``pass_ack``: ``AckReceived``;
- ``timeout``: ``Timeout``; ``transport_failed``: ``TransportFailed``; ``ack_timeout``: count a
  Timer H expiry (the server transaction just ends: the TU has nothing left to do);
- ``start_x``: start timer x with its first duration (``Timers.initial``). Retransmission timers (A, E, G)
  only start over unreliable transports; a zero duration (D, I, J, K over reliable transports) fires the
  timer at once, within the same call;
- ``backoff_x``: restart retransmission timer x with its next interval (``Timers.backoff``).

``STATE_TIMERS`` lists the timers allowed to run in each state: when a transaction changes state, every
running timer not allowed in the new state is cancelled (so Timer B stops on a provisional response
while Timer F survives Trying -> Proceeding). Entering Terminated removes the transaction from the table
and emits ``Terminated``.

Outside the tables, ``TransactionTable.respond`` applies RFC 4320 to non-INVITE server transactions
(no 408, no provisional but 100, no early 100 over UDP) and ``TransactionTable.receive`` does the
matching: a request that matches no transaction creates one in the machine's start state.
"""

from __future__ import annotations

from typing import NamedTuple

from .txn import State

__all__ = [
    "INVITE_CLIENT",
    "INVITE_SERVER",
    "NON_INVITE_CLIENT",
    "NON_INVITE_SERVER",
    "Machine",
    "Step",
]

CALLING = State.CALLING
TRYING = State.TRYING
PROCEEDING = State.PROCEEDING
COMPLETED = State.COMPLETED
ACCEPTED = State.ACCEPTED
CONFIRMED = State.CONFIRMED
TERMINATED = State.TERMINATED


class Step(NamedTuple):
    """The next state and the effects to carry out, in order."""

    state: State
    effects: tuple[str, ...] = ()


class Machine(NamedTuple):
    """One state machine: its start, its transitions, and which timers may run in which state."""

    name: str
    start: Step
    table: dict[tuple[State, str], Step]
    state_timers: dict[State, frozenset[str]]


# RFC 3261 17.1.1 (Figure 5) as amended by RFC 6026 (Figure 5 there: the Accepted state and Timer M).
INVITE_CLIENT = Machine(
    "invite client",
    Step(CALLING, ("start_a", "start_b")),
    {
        (CALLING, "timer_a"): Step(CALLING, ("retransmit", "backoff_a")),
        (CALLING, "timer_b"): Step(TERMINATED, ("timeout",)),
        (CALLING, "1xx"): Step(PROCEEDING, ("pass_up",)),
        (CALLING, "2xx"): Step(ACCEPTED, ("pass_up", "start_m")),
        (CALLING, "300-699"): Step(COMPLETED, ("pass_up", "send_ack", "start_d")),
        (CALLING, "cancel_sent"): Step(CALLING, ("start_cancel",)),
        (CALLING, "timer_cancel"): Step(TERMINATED, ("timeout",)),
        (CALLING, "transport_err"): Step(TERMINATED, ("transport_failed",)),
        (PROCEEDING, "1xx"): Step(PROCEEDING, ("pass_up",)),
        (PROCEEDING, "2xx"): Step(ACCEPTED, ("pass_up", "start_m")),
        (PROCEEDING, "300-699"): Step(COMPLETED, ("pass_up", "send_ack", "start_d")),
        (PROCEEDING, "cancel_sent"): Step(PROCEEDING, ("start_cancel",)),
        (PROCEEDING, "timer_cancel"): Step(TERMINATED, ("timeout",)),
        (PROCEEDING, "transport_err"): Step(TERMINATED, ("transport_failed",)),
        # 17.1.1.2: "Any retransmissions of the final response that are received while in the Completed
        # state MUST cause the ACK to be re-passed to the transport layer for retransmission".
        (COMPLETED, "300-699"): Step(COMPLETED, ("resend_ack",)),
        (COMPLETED, "timer_d"): Step(TERMINATED),
        # The TU already has the final response; a failed ACK only ends the transaction.
        (COMPLETED, "transport_err"): Step(TERMINATED),
        # RFC 6026 7.2: in Accepted, every 2xx (retransmitted, or from another UAS) is passed up.
        (ACCEPTED, "2xx"): Step(ACCEPTED, ("pass_up",)),
        (ACCEPTED, "timer_m"): Step(TERMINATED),
        (ACCEPTED, "transport_err"): Step(TERMINATED),
    },
    {
        CALLING: frozenset({"timer_a", "timer_b", "timer_cancel"}),
        PROCEEDING: frozenset({"timer_cancel"}),
        COMPLETED: frozenset({"timer_d"}),
        ACCEPTED: frozenset({"timer_m"}),
    },
)

# RFC 3261 17.1.2 (Figure 6). Timer E: T1 doubling up to T2 in Trying, T2 in Proceeding (17.1.2.2).
NON_INVITE_CLIENT = Machine(
    "non-invite client",
    Step(TRYING, ("start_e", "start_f")),
    {
        (TRYING, "timer_e"): Step(TRYING, ("retransmit", "backoff_e")),
        (TRYING, "timer_f"): Step(TERMINATED, ("timeout",)),
        (TRYING, "1xx"): Step(PROCEEDING, ("pass_up",)),
        (TRYING, "200-699"): Step(COMPLETED, ("pass_up", "start_k")),
        (TRYING, "transport_err"): Step(TERMINATED, ("transport_failed",)),
        (PROCEEDING, "timer_e"): Step(PROCEEDING, ("retransmit", "backoff_e")),
        (PROCEEDING, "timer_f"): Step(TERMINATED, ("timeout",)),
        (PROCEEDING, "1xx"): Step(PROCEEDING, ("pass_up",)),
        (PROCEEDING, "200-699"): Step(COMPLETED, ("pass_up", "start_k")),
        (PROCEEDING, "transport_err"): Step(TERMINATED, ("transport_failed",)),
        # Completed absorbs retransmitted finals; Timer K then ends it.
        (COMPLETED, "timer_k"): Step(TERMINATED),
        (COMPLETED, "transport_err"): Step(TERMINATED),
    },
    {
        TRYING: frozenset({"timer_e", "timer_f"}),
        PROCEEDING: frozenset({"timer_e", "timer_f"}),
        COMPLETED: frozenset({"timer_k"}),
    },
)

# RFC 3261 17.2.1 (Figure 7) as amended by RFC 6026 (Figure 7 there: Accepted and Timer L).
INVITE_SERVER = Machine(
    "invite server",
    Step(PROCEEDING),
    {
        # A retransmitted INVITE re-sends the last provisional (or a 100 Trying if none was sent yet).
        (PROCEEDING, "request"): Step(PROCEEDING, ("resend",)),
        (PROCEEDING, "tu_1xx"): Step(PROCEEDING, ("send",)),
        (PROCEEDING, "tu_2xx"): Step(ACCEPTED, ("send", "start_l")),
        (PROCEEDING, "tu_300-699"): Step(COMPLETED, ("send", "start_g", "start_h")),
        (PROCEEDING, "transport_err"): Step(TERMINATED),
        (COMPLETED, "request"): Step(COMPLETED, ("resend",)),
        (COMPLETED, "timer_g"): Step(COMPLETED, ("resend", "backoff_g")),
        # The ACK for a non-2xx is hop by hop: absorbed here, never passed up.
        (COMPLETED, "ack"): Step(CONFIRMED, ("start_i",)),
        (COMPLETED, "timer_h"): Step(TERMINATED, ("ack_timeout",)),
        (COMPLETED, "transport_err"): Step(TERMINATED),
        # Confirmed absorbs further ACKs and INVITE retransmissions until Timer I.
        (CONFIRMED, "timer_i"): Step(TERMINATED),
        # RFC 6026 7.1: in Accepted the TU's further 2xx are sent; ACKs (end to end) go up; INVITE
        # retransmissions are absorbed; the transaction never retransmits the 2xx itself.
        (ACCEPTED, "tu_2xx"): Step(ACCEPTED, ("send",)),
        (ACCEPTED, "ack"): Step(ACCEPTED, ("pass_ack",)),
        (ACCEPTED, "timer_l"): Step(TERMINATED),
        (ACCEPTED, "transport_err"): Step(TERMINATED),
    },
    {
        PROCEEDING: frozenset(),
        COMPLETED: frozenset({"timer_g", "timer_h"}),
        CONFIRMED: frozenset({"timer_i"}),
        ACCEPTED: frozenset({"timer_l"}),
    },
)

# RFC 3261 17.2.2 (Figure 8). Trying discards retransmissions ("MUST be discarded"); Proceeding and
# Completed re-send the last response. timer_guard is trioproxy's bound on an unanswered transaction.
NON_INVITE_SERVER = Machine(
    "non-invite server",
    Step(TRYING, ("start_guard",)),
    {
        (TRYING, "tu_1xx"): Step(PROCEEDING, ("send",)),
        (TRYING, "tu_200-699"): Step(COMPLETED, ("send", "start_j")),
        (TRYING, "timer_guard"): Step(TERMINATED),
        (TRYING, "transport_err"): Step(TERMINATED),
        (PROCEEDING, "request"): Step(PROCEEDING, ("resend",)),
        (PROCEEDING, "tu_1xx"): Step(PROCEEDING, ("send",)),
        (PROCEEDING, "tu_200-699"): Step(COMPLETED, ("send", "start_j")),
        (PROCEEDING, "timer_guard"): Step(TERMINATED),
        (PROCEEDING, "transport_err"): Step(TERMINATED),
        (COMPLETED, "request"): Step(COMPLETED, ("resend",)),
        (COMPLETED, "timer_j"): Step(TERMINATED),
        (COMPLETED, "transport_err"): Step(TERMINATED),
    },
    {
        TRYING: frozenset({"timer_guard"}),
        PROCEEDING: frozenset({"timer_guard"}),
        COMPLETED: frozenset({"timer_j"}),
    },
)
