"""Edits on the hot path: branches, responses to a request, CANCEL and ACK, Max-Forwards."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import SIPError
from .message import Request, Response, _name_of, _value
from .status import reason_phrase

__all__ = [
    "decrement_max_forwards",
    "has_tag_param",
    "make_ack",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_tag",
]

# RFC 3261 8.1.1.7: every branch starts with the magic cookie.
MAGIC_COOKIE = "z9hG4bK"

# RFC 3261 8.2.6.2: a response copies these from the request (Timestamp only into a 100, 8.2.6.1).
_RESPONSE_COPY = frozenset({"via", "from", "to", "call-id", "cseq"})


# Random hex from the OS CSPRNG, drawn in blocks (one system call per 100 branches): branches must not be
# guessable, or a stranger who saw one could forge responses for the next transactions.
_branches: list[str] = []
os.register_at_fork(after_in_child=_branches.clear)  # a forked worker draws its own


def new_branch() -> str:
    """A fresh Via branch: the RFC 3261 magic cookie and 20 random hex digits."""
    if not _branches:
        pool = os.urandom(1000).hex()
        _branches.extend([MAGIC_COOKIE + pool[i : i + 20] for i in range(0, 2000, 20)])
    return _branches.pop()


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 19.3: at least 32 bits of randomness)."""
    return os.urandom(6).hex()


def has_tag_param(value: str) -> bool:
    """Whether a From/To value carries a ``tag`` header parameter: a ``;tag`` outside quotes and ``<>``.

    A text scan that never parses the display name or URI (both may be malformed).
    """
    if ";" not in value:
        return False
    if '"' not in value:
        # The common case: the header parameters are what follows the last ">" (all of an addr-spec).
        if "<" not in value:
            return _params_have_tag(value)
        close = value.rfind(">")
        return close > value.rfind("<") and _params_have_tag(value[close + 1 :])
    quoted = escaped = angle = False
    for i, c in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif angle:
            if c == ">":
                angle = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ";":
            # Past the quotes and the brackets, so a "<" or '"' later on is malformed anyway.
            return not angle and _params_have_tag(value[i:])
    return False


def _params_have_tag(params: str) -> bool:
    for param in params.split(";")[1:]:
        if param.split("=", 1)[0].strip(" \t").lower() == "tag":
            return True
    return False


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A response to ``request`` (RFC 3261 8.2.6): Vias, From, To, Call-ID, CSeq copied, Content-Length 0.

    A To tag is added when the To has none and the status is above 100 (``to_tag`` or a new one). The
    header lines are copied as text and the To tag is found by a text scan, so a request whose From, To or
    URI does not parse can still be answered (a 400 to exactly such a request).
    """
    resp = Response.__new__(Response)
    resp.status = status
    resp.reason = reason if reason is not None else reason_phrase(status)
    resp.version = "SIP/2.0"
    lines: list[str] = []
    keys: list[str] = []
    copy = _RESPONSE_COPY if status != 100 else _RESPONSE_COPY | {"timestamp"}
    for key, line in zip(request._keys, request._lines, strict=True):
        if key in copy:
            if key == "to" and status > 100:
                value = _value(line)
                if not has_tag_param(value):
                    line = f"{_name_of(line)}: {value};tag={to_tag or new_tag()}"
            lines.append(line)
            keys.append(key)
    resp._lines = lines
    resp._keys = keys
    resp._cache = {}
    resp._clen_ok = None
    resp._raw = None
    resp.body = b""
    resp.source = None
    resp.flow = None
    for name, value in headers:
        resp.append(name, value)
    if "content-length" not in keys:
        lines.append("Content-Length: 0")
        keys.append("content-length")
    return resp


def make_cancel(request: Request) -> Request:
    """The CANCEL for a client transaction's request (RFC 3261 9.1)."""
    # Same Request-URI, Call-ID, To, From, CSeq number; one Via equal to the request's top Via;
    # the request's Route set.
    cancel = Request("CANCEL", request.uri.copy())
    _copy_common(request, cancel, to_line=None)
    return cancel


def make_ack(request: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response to an INVITE client transaction (RFC 3261 17.1.1.3)."""
    ack = Request("ACK", request.uri.copy())
    to_line = None
    for key, line in zip(response._keys, response._lines, strict=True):
        if key == "to":
            to_line = line
            break
    _copy_common(request, ack, to_line=to_line)
    return ack


def _copy_common(request: Request, out: Request, to_line: str | None) -> None:
    top_via = request.top_via
    cseq = request.cseq
    out.append("Via", str(top_via))
    for key, line in zip(request._keys, request._lines, strict=True):
        if key in ("from", "call-id", "route"):
            out._lines.append(line)
            out._keys.append(key)
        elif key == "to":
            out._lines.append(to_line if to_line is not None else line)
            out._keys.append(key)
    out.append("CSeq", f"{cseq.seq} {out.method}")
    out.append("Max-Forwards", "70")
    out.append("Content-Length", "0")
    out._cache.clear()


# Max-Forwards as usually written ("1" to "255", no leading zero) -> (value - 1, the new line's tail).
# Looked up as written after the colon (usually one SP before the digits), then stripped.
_MF_STEP: dict[str, tuple[int, str]] = {
    f"{sp}{n}": (n - 1, f": {n - 1}") for n in range(1, 256) for sp in ("", " ")
}


def decrement_max_forwards(req: Request) -> int:
    """Decrement Max-Forwards (RFC 3261 16.6 step 3: add 70 when absent); returns the new value.

    SIPError 483 when it is already 0.
    """
    keys = req._keys
    try:
        i = keys.index("max-forwards")
    except ValueError:
        req.append("Max-Forwards", "70")
        return 70
    line = req._lines[i]
    c = line.index(":")
    value = line[c + 1 :]
    step = _MF_STEP.get(value)
    if step is None:
        value = value.strip(" \t")
        step = _MF_STEP.get(value)
    if step is not None:
        n, tail = step
        req._lines[i] = line[:c] + tail
        # What _edited does; no typed value is cached for Max-Forwards.
        req._raw = None
        return n
    if not value.isdigit() or not value.isascii() or len(value) > 12:
        raise SIPError(400, "Bad Max-Forwards")
    n = int(value)
    if n > 255:
        raise SIPError(400, "Bad Max-Forwards")
    if n == 0:
        raise SIPError(483, "Too Many Hops")
    n -= 1
    req._lines[i] = f"{line[:c]}: {n}"
    # What _edited does; no typed value is cached for Max-Forwards.
    req._raw = None
    return n
