"""Transaction matching keys (RFC 3261 17.1.3, 17.2.3, 9.2)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioproxy.sip import Request, Response

    from .txn import Key

__all__ = ["MAGIC_COOKIE", "client_key", "response_key", "server_key"]

# RFC 3261 8.1.1.7: branches of RFC 3261 elements start with this cookie.
MAGIC_COOKIE = "z9hG4bK"

# Default ports, for comparing a sent-by written without a port to one written with it (18.1.1).
_DEFAULT_PORTS = {"TLS": 5061, "WSS": 443, "WS": 80}


# Keys live as long as their transactions (32 s of lingering): the strings they share with every other
# transaction (methods, hosts) are interned, so each key holds only its own branch.
_intern = sys.intern


def client_key(branch: str, method: str) -> Key:
    """The key of a client transaction: its top Via branch and its method (17.1.3)."""
    return (branch, _intern(method))


def response_key(response: Response) -> Key | None:
    """The client transaction a response belongs to (17.1.3): top Via branch and CSeq method.

    Returns None when the response has no branch (it cannot match any transaction of ours).
    """
    branch = response.top_via.branch
    if not branch:
        return None
    return (branch, response.cseq.method)  # a lookup only: not kept


def server_key(request: Request, method: str | None = None) -> Key:
    """The key of the server transaction ``request`` belongs to, as if its method were ``method``.

    RFC 3261 17.2.3: with the magic cookie, the key is the top Via branch, its sent-by and the method,
    ACK counting as INVITE. Without it (an RFC 2543 client) the key is the Request-URI, From tag,
    Call-ID, CSeq number, the whole top Via and the method; the To tag is compared by the table, because
    an ACK carries the To tag of the response rather than the one of the INVITE.
    Raises ``SIPError`` (400) when Via, CSeq, From or Call-ID is missing or malformed.
    """
    if method is None:
        method = request.method
    if method == "ACK":
        method = "INVITE"
    via = request.top_via
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        host, port = via.sent_by
        if port is None:
            port = _DEFAULT_PORTS.get(via.transport.upper(), 5060)
        return ("3261", branch, _intern(host.lower()), port, _intern(method))
    return (
        "2543",
        method,
        str(request.uri),
        request.from_.tag,
        request.call_id,
        request.cseq.seq,
        str(via),
    )
