"""Header names (case, compact forms), multi-value splitting and generic parameters."""

from __future__ import annotations

import re

from .errors import SIPError

__all__ = [
    "COMPACT_FORMS",
    "MULTI_VALUE",
    "canonical_name",
    "header_key",
    "parse_params",
    "split_values",
]

# IANA "Header Fields" registry, compact forms (RFC 3261 7.3.3 and the RFCs that define each).
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",  # RFC 3841
    "b": "referred-by",  # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",  # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",  # RFC 4474
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",  # RFC 6665
    "v": "via",
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 4474
}

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1): several values may share a line.
MULTI_VALUE = frozenset(
    {
        "via", "route", "record-route", "contact", "path", "service-route", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language", "allow-events",
        "content-encoding", "content-language", "in-reply-to", "warning", "call-info", "alert-info",
        "error-info", "accept-contact", "reject-contact", "request-disposition", "security-client",
        "security-server", "security-verify", "p-associated-uri", "p-asserted-identity",
        "p-preferred-identity", "history-info", "reason", "privacy",
    }
)  # fmt: skip

# Spelling used when trioproxy writes a header line itself.
_CANONICAL: dict[str, str] = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version",
    "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag", "sip-if-match": "SIP-If-Match",
}  # fmt: skip

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Name as written -> key; bounded so that hostile input cannot grow it without end.
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX = 4096


def header_key(name: str) -> str:
    """The lookup key of a header name: lowercase long form. Raises SIPError 400 for a non-token name."""
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    # RFC 3261 7.3.1: HCOLON = *( SP / HTAB ) ":" SWS, so blanks may follow the name.
    bare = name.rstrip(" \t")
    if not _TOKEN_RE.fullmatch(bare):
        raise SIPError(400, "Bad Header Name")
    key = bare.lower()
    key = COMPACT_FORMS.get(key, key)
    if len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[name] = key
    return key


def canonical_name(key: str) -> str:
    """How trioproxy spells a header it writes (``Record-Route``, ``Call-ID``, ``CSeq``)."""
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


def split_values(value: str) -> list[str]:
    """Split a list header value on commas outside quotes and angle brackets (RFC 3261 7.3.1)."""
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        # Nothing to skip over (a Via line): every comma separates.
        return [v for v in (part.strip() for part in value.split(",")) if v]
    out: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise SIPError(400, "Unterminated Quoted String")
    out.append(value[start:].strip())
    return [v for v in out if v]


# RFC 3261 25.1: generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string;
# SEMI and EQUAL allow LWS (already unfolded to SP here) around them.
PARAM = (
    r"[ \t]*+;[ \t]*+([A-Za-z0-9\-.!%*_+`'~]++)"
    r"(?:[ \t]*+=[ \t]*+([A-Za-z0-9\-.!%*_+`'~:\[\]]++|\"(?:[^\"\\]|\\.)*+\"))?+"
)
PARAM_NC = (
    r"[ \t]*+;[ \t]*+[A-Za-z0-9\-.!%*_+`'~]++"
    r"(?:[ \t]*+=[ \t]*+(?:[A-Za-z0-9\-.!%*_+`'~:\[\]]++|\"(?:[^\"\\]|\\.)*+\"))?+"
)
_PARAMS_RE = re.compile(rf"(?:{PARAM_NC})*+[ \t]*+", re.S)
PARAM_FINDALL = re.compile(PARAM, re.S).findall


def parse_params(text: str, what: str = "Parameter") -> dict[str, str | None]:
    """Parse ``;name=value;flag`` parameters (``text`` starts at the first ``;``); names lowercased."""
    if not _PARAMS_RE.fullmatch(text):
        raise SIPError(400, f"Bad {what}")
    return {name.lower(): (value or None) for name, value in PARAM_FINDALL(text)}


def format_params(params: dict[str, str | None]) -> str:
    """Serialize parameters as ``;name=value;flag``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
