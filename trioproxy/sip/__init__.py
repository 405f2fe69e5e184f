"""The SIP message layer: bytes <-> Request/Response, URIs, headers, framing, edits. No I/O."""

from __future__ import annotations

from . import limits
from .address import Address
from .edits import decrement_max_forwards, make_ack, make_cancel, make_response, new_branch, new_tag
from .errors import SIPError
from .framing import Keepalive, StreamFramer
from .headers import COMPACT_FORMS, MULTI_VALUE, canonical_name, header_key, split_values
from .message import Message, Request, Response
from .parser import parse_message_untrusted
from .status import reason_phrase
from .uri import URI, parse_uri_untrusted
from .validate import validate_request_untrusted, validate_response_untrusted
from .values import CSeq, NameAddr, Via

__all__ = [
    "COMPACT_FORMS",
    "MULTI_VALUE",
    "URI",
    "Address",
    "CSeq",
    "Keepalive",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SIPError",
    "StreamFramer",
    "Via",
    "canonical_name",
    "decrement_max_forwards",
    "header_key",
    "limits",
    "make_ack",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_message_untrusted",
    "parse_uri_untrusted",
    "reason_phrase",
    "split_values",
    "validate_request_untrusted",
    "validate_response_untrusted",
]
