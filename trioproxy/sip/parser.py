"""Bytes to Request/Response: split the head once, keep header lines raw, check only the framing.

What is checked here: size limits, the start line (method token, no LWS inside the Request-Line, version,
status code), that every header line is ``token: value``, and Content-Length against the body (RFC 3261
18.3). Header values are parsed when first read; ``validate_request_untrusted`` reads the ones a proxy
needs on arrival.

Two paths, one result: the everyday message (CRLF lines, no folding, header names seen before) is taken
with a few whole-head scans (splitlines, one findall for the names, the name cache); any other input goes
to ``_parse_general``, which makes each check on its own. A message parses the same by either path (a
property test holds them to that).
"""

from __future__ import annotations

import re
from operator import is_

from .errors import SIPError
from .headers import _KEY_CACHE, header_key
from .limits import MAX_HEADERS, MAX_LINE_LENGTH, MAX_MESSAGE_SIZE
from .message import Request, Response
from .values import COMMON_METHODS

__all__ = ["parse_message_untrusted"]

_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_FOLD_RE = re.compile(r"\n[ \t]")
_NAMES_RE = re.compile(r"\n([^:\n]*+):")
_CRLF_BYTES = (13, 10)
_new = object.__new__
_KEY_OF = _KEY_CACHE.__getitem__
_FAST_NAMES_RE = re.compile(r"\r\n([^:]*+):")
# What str.splitlines breaks at.
_LINE_BREAKS = "\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)


def parse_message_untrusted(data: bytes) -> Request | Response:
    """Parse one datagram or one framed stream message; raises only SIPError (with the status to answer)."""
    # The common case in one pass of cheap C-level scans: a CRLF head without folding, bare CR/LF or
    # oversized lines, every header name already known. Anything else, or any doubt, goes to _parse_general,
    # which makes every check itself; both end in _finish, so a message parses the same either way.
    try:
        if len(data) > MAX_MESSAGE_SIZE:
            raise SIPError(413, "Message Too Large")
        head_bytes, sep, body = data.partition(b"\r\n\r\n")
        if sep and data[0] not in _CRLF_BYTES:
            head = head_bytes.decode("utf-8", "surrogateescape")
            # splitlines breaks at CRLF, but also at a bare CR or LF (and at VT, FF...). Each header name follows
            # a CRLF and ends at a colon; one name per line break means every break is a CRLF followed by a
            # header line with a colon (RFC 3261 7: no bare CR or LF; 7.3: name HCOLON value). The head cannot
            # end in CRLF; any other break at its very end is left to _parse_general.
            lines = head.splitlines()
            names = _FAST_NAMES_RE.findall(head)
            if (
                len(names) == len(lines) - 1
                and len(names) <= MAX_HEADERS
                and len(head) <= MAX_LINE_LENGTH
                and head[-1] not in _LINE_BREAKS
            ):
                # Every name already known (so a token: never a blank-led continuation line, RFC 3261 7.3.1,
                # nor anything spanning a line break); a KeyError leaves the rest to _parse_general.
                try:
                    keys = list(map(_KEY_OF, names))
                except KeyError:
                    pass
                else:
                    return _finish(data, lines, keys, body)
        return _parse_general(data)
    except SIPError:
        raise
    except Exception:  # the contract: nothing but SIPError ever leaves the parser
        raise SIPError(400, "Malformed Message") from None


def _unfold(lines: list[str]) -> list[str]:
    # RFC 3261 7.3.1: a line starting with SP or HT continues the previous one; the fold is one SP.
    groups: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if len(groups) < 2:
                raise SIPError(400, "Continuation Before First Header")
            groups[-1].append(line.strip(" \t"))
        else:
            groups.append([line])
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
        else:
            group[0] = group[0].rstrip(" \t")
            out.append(" ".join(part for part in group if part))
    return out


def _parse_general(data: bytes) -> Request | Response:
    """Every message the fast path declines: leading CRLFs, bare LF heads, folding, new header names."""
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 7.5: CRLFs before the start line are ignored.
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head = data[:end].decode("utf-8", "surrogateescape")
        lines = head.split("\r\n")
        n = len(lines) - 1
        if head.count("\n") != n or head.count("\r") != n:
            raise SIPError(400, "Bare CR or LF")
        body = data[end + 4 :]
    else:
        # Tolerate a head terminated by bare LFs (RFC 3261 7.5 asks for CRLF; some agents send LF).
        end = data.find(b"\n\n")
        if end >= 0:
            head = data[:end].decode("utf-8", "surrogateescape")
            if "\r" in head:
                raise SIPError(400, "Bare CR or LF")
            lines = head.split("\n")
            body = data[end + 2 :]
        elif data.endswith(b"\r\n"):
            # A datagram whose head ends without the empty line (RFC 5118 4.10 prints two such): taken as
            # a message without a body.
            head = data[:-2].decode("utf-8", "surrogateescape")
            lines = head.split("\r\n")
            n = len(lines) - 1
            if head.count("\n") != n or head.count("\r") != n:
                raise SIPError(400, "Bare CR or LF")
            body = b""
        else:
            raise SIPError(400, "Incomplete Message Head")
    if _FOLD_RE.search(head) is not None:
        lines = _unfold(lines)
        names = [line.partition(":")[0] for line in lines[1:]]
        if any(map(is_, names, lines[1:])):
            raise SIPError(400, "Bad Header Line")
    else:
        # One pass over the head for every header name; a line without a colon has none, so the count
        # tells (RFC 3261 7.3: every header line is name HCOLON value).
        names = _NAMES_RE.findall(head)
        if len(names) != len(lines) - 1:
            raise SIPError(400, "Bad Header Line")
    if len(lines) > MAX_HEADERS + 1:
        raise SIPError(400, "Too Many Headers")
    if len(head) > MAX_LINE_LENGTH and max(map(len, lines)) > MAX_LINE_LENGTH:
        if len(lines[0]) > MAX_LINE_LENGTH and not lines[0].startswith("SIP/"):
            raise SIPError(414, "Request-URI Too Long")
        raise SIPError(400, "Line Too Long")
    # Names as written -> keys, through the cache of the names already seen.
    keys: list[str | None] = list(map(_KEY_CACHE.get, names))
    if None in keys:
        keys = [key if key is not None else header_key(name) for key, name in zip(keys, names, strict=True)]
    return _finish(data, lines, keys, body)  # type: ignore[arg-type]  # no None left


def _finish(data: bytes, lines: list[str], keys: list[str], body: bytes) -> Request | Response:
    # The start line, the message object and the body; ``lines`` still holds the start line first.
    start = lines[0]
    del lines[0]
    msg: Request | Response
    if start.startswith("SIP/"):
        msg = _status_line(start)
    else:
        # RFC 3261 7.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF (single SPs, no other LWS).
        try:
            method, uri, version = start.split(" ")
        except ValueError:
            raise SIPError(400, "Bad Request-Line") from None
        if method not in COMMON_METHODS and not _METHOD_RE.fullmatch(method):
            raise SIPError(400, "Bad Method")
        if not uri or "\t" in uri:
            raise SIPError(400, "Bad Request-URI")
        msg = req = _new(Request)
        req.method = method
        req._uri = None
        req._uri_text = uri
        req._uri_snap = ""
        req.version = version if version == "SIP/2.0" else _version(version)
    msg._lines = lines
    msg._keys = keys
    msg._cache = {}
    msg.source = None
    msg.flow = None

    # RFC 3261 18.3: the body is Content-Length bytes; more is discarded, less is an error.
    try:
        i = keys.index("content-length")
    except ValueError:
        msg._clen_ok = None
    else:
        value = lines[i]
        value = value[value.index(":") + 1 :].strip(" \t")
        if not value.isdigit() or not value.isascii() or len(value) > 10:
            raise SIPError(400, "Bad Content-Length")
        length = int(value)
        if length != len(body):
            if length > len(body):
                raise SIPError(400, "Content-Length Larger Than Body")
            data = data[: len(data) - len(body) + length]
            body = body[:length]
        # Written without leading zeros, the line is what a rebuild would write.
        msg._clen_ok = body if value[0] != "0" or value == "0" else None
    msg.body = body
    msg._raw = data
    return msg


def _version(version: str) -> str:
    if version == "SIP/2.0":
        return version
    if version.upper() == "SIP/2.0":
        return "SIP/2.0"
    if _VERSION_RE.fullmatch(version):
        raise SIPError(505, "Version Not Supported")
    raise SIPError(400, "Bad SIP Version")


def _status_line(start: str) -> Response:
    # RFC 3261 7.2: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not code.isascii() or not "100" <= code <= "699":
        raise SIPError(400, "Bad Status Code")
    resp = _new(Response)
    resp.version = _version(version)
    resp.status = int(code)
    resp.reason = reason
    return resp
