"""Checks a proxy makes on a message when it arrives (RFC 3261 8.2 and 16.3 step 1-2)."""

from __future__ import annotations

from .errors import SIPError
from .message import Request, Response

__all__ = ["validate_request_untrusted", "validate_response_untrusted"]

# RFC 3261 7.3.1: headers whose grammar allows one value only.
_SINGLE = ("to", "from", "call-id", "cseq", "max-forwards", "content-length", "content-type")


def _common(msg: Request | Response) -> None:
    # RFC 3261 8.1.1: To, From, CSeq, Call-ID, Via are mandatory in every request (and copied in responses).
    for key in ("to", "from", "call-id", "cseq", "via"):
        if not msg.has(key):
            raise SIPError(400, f"Missing {key.title()}")
    for key in _SINGLE:
        if msg._keys.count(key) > 1:
            raise SIPError(400, f"Multiple {key.title()}")
    for key in ("content-length", "max-forwards", "call-id"):
        value = msg.get(key)
        if value is not None and "," in value:
            raise SIPError(400, f"Multiple {key.title()} Values")
    if not msg.vias:
        raise SIPError(400, "Missing Via")
    msg.cseq  # noqa: B018 - parse (RFC 3261 20.16: below 2**31)
    msg.call_id  # noqa: B018 - non-empty
    msg.from_  # noqa: B018 - parse
    msg.to  # noqa: B018
    msg.max_forwards  # noqa: B018
    msg.content_length  # noqa: B018
    msg.contacts  # noqa: B018
    msg.routes  # noqa: B018
    msg.record_routes  # noqa: B018
    msg.paths  # noqa: B018


def validate_request_untrusted(req: Request) -> None:
    """Raise SIPError with the status to answer when a received request is not fit to process.

    Checks: the Request-URI parses, its scheme is sip/sips/tel (else 416) and it carries no headers
    (RFC 3261 19.1.5); To, From, Call-ID, CSeq and Via are present once and parse; Max-Forwards,
    Content-Length, Contact, Route, Record-Route and Path parse; the CSeq method equals the
    request method (RFC 3261 8.1.1.5). The version (505) and Content-Length against the body are the
    parser's checks. Max-Forwards 0 (483), Require/Proxy-Require (420), Expires (a registrar reads it)
    and authentication are the proxy's or registrar's decisions, not this function's.
    """
    uri = req.uri
    if uri.scheme not in ("sip", "sips", "tel"):
        raise SIPError(416, "Unsupported URI Scheme")
    if uri.headers:
        raise SIPError(400, "Headers In Request-URI")
    _common(req)
    if req.cseq.method != req.method:
        raise SIPError(400, "CSeq Method Mismatch")


def validate_response_untrusted(resp: Response) -> None:
    """Raise SIPError when a received response is malformed (the proxy then drops it, RFC 3261 16.7)."""
    _common(resp)
