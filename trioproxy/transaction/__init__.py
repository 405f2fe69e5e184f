"""Sans-IO SIP transactions (RFC 3261 17, RFC 6026): state machines, matching, timers; time passed in.

Driving it: feed every received message to ``TransactionTable.receive(msg, flow, now)``, start client
transactions with ``start_client``, answer server transactions with ``respond``; carry out the returned
actions in order (``SendRequest``/``SendResponse`` go to the transport; a send failure goes back as
``transport_error``); one task sleeps until ``next_deadline()`` and calls ``expire(now)``.
The state machines are the tables in ``fsm.py``. After its final response a transaction lingers
(``LINGERING``) holding only what absorbing retransmissions needs (``txn.py``).
"""

from __future__ import annotations

from .actions import (
    AckReceived,
    Action,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    SendRequest,
    SendResponse,
    StrayResponse,
    Terminated,
    Timeout,
    TransportFailed,
)
from .fsm import INVITE_CLIENT, INVITE_SERVER, NON_INVITE_CLIENT, NON_INVITE_SERVER, Machine, Step
from .keys import MAGIC_COOKIE, client_key, response_key, server_key
from .table import TransactionTable
from .timers import Timers
from .txn import LINGERING, ClientTransaction, ServerTransaction, State

__all__ = [
    "INVITE_CLIENT",
    "INVITE_SERVER",
    "LINGERING",
    "MAGIC_COOKIE",
    "NON_INVITE_CLIENT",
    "NON_INVITE_SERVER",
    "AckReceived",
    "Action",
    "CancelReceived",
    "ClientTransaction",
    "Machine",
    "RequestReceived",
    "ResponseReceived",
    "SendRequest",
    "SendResponse",
    "ServerTransaction",
    "State",
    "Step",
    "StrayResponse",
    "Terminated",
    "Timeout",
    "Timers",
    "TransactionTable",
    "TransportFailed",
    "client_key",
    "response_key",
    "server_key",
]
