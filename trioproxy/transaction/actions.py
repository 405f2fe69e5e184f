"""Actions: what the transaction table asks its caller (the transport and the proxy core) to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from trioproxy.sip import Address, Request, Response

    from .txn import ClientTransaction, ServerTransaction

__all__ = [
    "AckReceived",
    "Action",
    "CancelReceived",
    "RequestReceived",
    "ResponseReceived",
    "SendRequest",
    "SendResponse",
    "StrayResponse",
    "Terminated",
    "Timeout",
    "TransportFailed",
]


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``msg`` (a request, a retransmission of it, or the ACK of a non-2xx) to ``dest``."""

    msg: Request
    dest: Address
    txn: ClientTransaction


@dataclass(frozen=True, slots=True)
class SendResponse:
    """Send ``msg`` back over ``flow`` (RFC 3261 18.2.2), first time or a retransmission."""

    msg: Response
    flow: object
    txn: ServerTransaction


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created server transaction ``txn``; the TU answers with ``respond()``."""

    txn: ServerTransaction
    request: Request


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK the TU must route: an ACK for a 2xx (end to end, RFC 6026) or one matching no transaction."""

    request: Request
    flow: object


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A new CANCEL (9.2). ``server_txn`` is the INVITE server transaction it cancels, or None.

    ``cancel_txn`` is the CANCEL's own non-INVITE server transaction: the TU answers it with
    ``respond(cancel_txn, 200 ...)`` (16.10), or lets it lapse when it forwards the CANCEL statelessly.
    Retransmissions of the CANCEL are absorbed by ``cancel_txn`` (they re-send its last response).
    """

    cancel: Request
    flow: object
    server_txn: ServerTransaction | None
    cancel_txn: ServerTransaction


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for client transaction ``txn`` that the TU must see (1xx, final, 2xx in Accepted)."""

    txn: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class Timeout:
    """Client transaction ``txn`` got no final response in time (Timer B/F, or 64*T1 after CANCEL, 9.1).

    The proxy treats it as a 408 on that branch (16.8).
    """

    txn: ClientTransaction


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """Client transaction ``txn`` could not send its request; the proxy treats it as a 503 (16.9)."""

    txn: ClientTransaction


@dataclass(frozen=True, slots=True)
class Terminated:
    """``txn`` reached Terminated and left the table; emitted exactly once per transaction."""

    txn: ClientTransaction | ServerTransaction


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction; a stateful proxy drops it (RFC 6026 7.3)."""

    response: Response


Action: TypeAlias = (
    SendRequest
    | SendResponse
    | RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | Timeout
    | TransportFailed
    | Terminated
    | StrayResponse
)
