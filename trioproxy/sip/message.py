"""SIP messages: Request and Response over raw header lines, values parsed on first read.

A parsed message keeps its header lines as text, unfolded, in order, each with its lookup key (lowercase
long form). Typed values (Via, CSeq, From...) are parsed when first read and cached until that header is
edited. Typed values are read-only: they are shared with ``copy()``s of the message (change a ``.copy()`` of
one and ``set`` the header). ``to_bytes()`` returns the original bytes while nothing was edited, and rebuilds
the head only after an edit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from .address import Address
from .errors import SIPError
from .headers import _KEY_CACHE, MULTI_VALUE, canonical_name, header_key, split_values
from .uri import URI, parse_uri_untrusted
from .values import CSeq, NameAddr, Via

__all__ = ["Message", "Request", "Response"]


def _key(name: str) -> str:
    key = _KEY_CACHE.get(name)
    return key if key is not None else header_key(name)


# Header name as given to an edit -> how its line starts ("v" -> "Via: "); bounded like _KEY_CACHE.
_WRITTEN: dict[str, str] = {}


def _value(line: str) -> str:
    return line[line.index(":") + 1 :].strip(" \t")


def _name_of(line: str) -> str:
    return line[: line.index(":")].rstrip(" \t")


class Message:
    """What Request and Response share: header lines, body, edits, typed accessors."""

    __slots__ = ("_cache", "_clen_ok", "_keys", "_lines", "_raw", "body", "flow", "source", "version")

    is_request: ClassVar[bool] = False

    _lines: list[str]
    _keys: list[str]
    _raw: bytes | None
    _cache: dict[str, Any]
    # The body the first Content-Length line is known to state exactly (as _rebuild writes it), or None:
    # then _rebuild checks the line. Edits of Content-Length reset it.
    _clen_ok: bytes | None
    body: bytes
    source: Address | None
    flow: object | None
    version: str

    def _init_headers(self, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        self._lines = []
        self._keys = []
        self._raw = None
        self._cache = {}
        self._clen_ok = None
        self.body = body
        self.source = None
        self.flow = None
        self.version = "SIP/2.0"
        for name, value in headers:
            self.append(name, value)

    # -- reading -------------------------------------------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first value of a header (the first list element for list headers), or None."""
        key = _key(name)
        try:
            i = self._keys.index(key)
        except ValueError:
            return None
        value = _value(self._lines[i])
        if key in MULTI_VALUE and ("," in value or not value):
            values = self.get_all(key)
            return values[0] if values else None
        return value

    def get_all(self, name: str) -> list[str]:
        """Every value of a header in order, list headers split on commas outside quotes and <>."""
        key = _key(name)
        keys = self._keys
        if key not in keys:
            return []
        out: list[str] = []
        multi = key in MULTI_VALUE
        for i, k in enumerate(keys):
            if k == key:
                value = _value(self._lines[i])
                if multi:
                    out.extend(split_values(value))
                else:
                    out.append(value)
        return out

    def has(self, name: str) -> bool:
        """Whether the header is present."""
        return _key(name) in self._keys

    def headers(self) -> list[tuple[str, str]]:
        """Every header line as (name as written, value), in order."""
        out = []
        for line in self._lines:
            c = line.index(":")
            out.append((line[:c].rstrip(" \t"), line[c + 1 :].strip(" \t")))
        return out

    # -- editing -------------------------------------------------------------------------------------------

    def _edited(self, key: str) -> None:
        self._raw = None
        if key == "content-length":
            self._clen_ok = None
        cache = self._cache
        if cache:
            cache.pop(key, None)
            if key == "via":
                cache.pop("via#1", None)

    @staticmethod
    def _line(name: str, key: str, value: str) -> str:
        # A line break in a value would smuggle in a header of its own.
        if "\n" in value or "\r" in value:
            raise ValueError(f"line break in a {name} value")
        # Compact forms are expanded when trioproxy writes a line; other names are written as given.
        return f"{canonical_name(key) if len(name) == 1 else name.strip()}: {value}"

    def set(self, name: str, value: str) -> None:
        """Replace every line of a header by one line (in place of the first), or append it."""
        key = _key(name)
        keys = self._keys
        line = self._line(name, key, value)
        try:
            first = keys.index(key)
        except ValueError:
            self._lines.append(line)
            keys.append(key)
        else:
            self._lines[first] = line
            if keys.count(key) > 1:
                for i in range(len(keys) - 1, first, -1):
                    if keys[i] == key:
                        del keys[i]
                        del self._lines[i]
        self._edited(key)

    def append(self, name: str, value: str) -> None:
        """Add a header line after the last one."""
        key = _key(name)
        self._lines.append(self._line(name, key, value))
        self._keys.append(key)
        self._edited(key)

    def insert_top(self, name: str, value: str) -> None:
        """Add a header line before the first line of that header, or at the top of the header block."""
        # The hot edit of a proxy (Via, Record-Route): _key, _line and _edited written out.
        key = _KEY_CACHE.get(name)
        if key is None:
            key = header_key(name)
        if "\n" in value or "\r" in value:
            raise ValueError(f"line break in a {name} value")
        keys = self._keys
        try:
            i = keys.index(key)
        except ValueError:
            i = 0
        written = _WRITTEN.get(name)
        if written is None:
            written = f"{canonical_name(key) if len(name) == 1 else name.strip()}: "
            if len(_WRITTEN) < 256:
                _WRITTEN[name] = written
        self._lines.insert(i, written + value)
        keys.insert(i, key)
        self._raw = None
        if key == "content-length":
            self._clen_ok = None
        cache = self._cache
        if cache:
            cache.pop(key, None)
            if key == "via":
                cache.pop("via#1", None)

    def remove(self, name: str) -> int:
        """Remove every line of a header; returns how many lines went."""
        key = _key(name)
        keys = self._keys
        count = keys.count(key)
        if count:
            for i in range(len(keys) - 1, -1, -1):
                if keys[i] == key:
                    del keys[i]
                    del self._lines[i]
            self._edited(key)
        return count

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a header, keeping the rest of a comma-joined line."""
        key = _key(name)
        keys = self._keys
        while key in keys:
            i = keys.index(key)
            line = self._lines[i]
            if key in MULTI_VALUE:
                values = split_values(_value(line))
                if len(values) > 1:
                    self._lines[i] = f"{_name_of(line)}: {', '.join(values[1:])}"
                    self._edited(key)
                    return values[0]
                del keys[i]
                del self._lines[i]
                self._edited(key)
                if values:
                    return values[0]
                continue
            del keys[i]
            del self._lines[i]
            self._edited(key)
            return _value(line)
        return None

    def replace_first(self, name: str, value: str) -> None:
        """Replace the first value of a header (e.g. the top Via after adding received/rport)."""
        key = _key(name)
        if key not in self._keys:
            raise KeyError(name)
        self.pop_first(name)
        self.insert_top(name, value)

    def set_body(self, data: bytes, content_type: str | None = None) -> None:
        """Replace the body; sets Content-Length (and Content-Type when given)."""
        self.body = data
        self.set("Content-Length", str(len(data)))
        if content_type is not None:
            self.set("Content-Type", content_type)

    # -- typed values --------------------------------------------------------------------------------------

    def _required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise SIPError(400, f"Missing {canonical_name(name)}")
        return value

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        vias: list[Via] | None = self._cache.get("via")
        if vias is None:
            vias = [Via.parse_untrusted(v) for v in self.get_all("via")]
            self._cache["via"] = vias
        return vias

    @property
    def top_via(self) -> Via:
        """The first Via value; SIPError 400 when there is none."""
        cache = self._cache
        via: Via | None = cache.get("via#1") if cache else None
        if via is None:
            cached: list[Via] | None = cache.get("via") if cache else None
            if cached:
                via = cached[0]
            else:
                try:
                    line = self._lines[self._keys.index("via")]
                except ValueError:
                    raise SIPError(400, "Missing Via") from None
                # A comma (never in a header name) may separate several values on the line.
                if "," in line:
                    via = Via.parse_untrusted(self._required("via"))
                else:
                    via = Via._parse_from(line, -1)
            cache["via#1"] = via
        return via

    @property
    def call_id(self) -> str:
        """Call-ID; SIPError 400 when absent or empty."""
        value = self._required("call-id")
        if not value:
            raise SIPError(400, "Empty Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        """CSeq; SIPError 400 when absent or malformed."""
        cache = self._cache
        cseq: CSeq | None = cache.get("cseq") if cache else None
        if cseq is None:
            try:
                line = self._lines[self._keys.index("cseq")]
            except ValueError:
                raise SIPError(400, "Missing CSeq") from None
            cseq = cache["cseq"] = CSeq.parse_untrusted(line[line.index(":") + 1 :])
        return cseq

    def _name_addr(self, key: str) -> NameAddr:
        value: NameAddr | None = self._cache.get(key)
        if value is None:
            value = self._cache[key] = NameAddr.parse_untrusted(self._required(key))
        return value

    @property
    def from_(self) -> NameAddr:
        """From; SIPError 400 when absent or malformed."""
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        """To; SIPError 400 when absent or malformed."""
        return self._name_addr("to")

    def _name_addrs(self, key: str) -> list[NameAddr]:
        values: list[NameAddr] | None = self._cache.get(key)
        if values is None:
            values = self._cache[key] = [NameAddr.parse_untrusted(v) for v in self.get_all(key)]
        return values

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value (``Contact: *`` gives one value whose ``is_star`` is True)."""
        return self._name_addrs("contact")

    @property
    def routes(self) -> list[NameAddr]:
        """Every Route value, top first."""
        return self._name_addrs("route")

    @property
    def record_routes(self) -> list[NameAddr]:
        """Every Record-Route value, top first."""
        return self._name_addrs("record-route")

    @property
    def paths(self) -> list[NameAddr]:
        """Every Path value (RFC 3327), top first."""
        return self._name_addrs("path")

    def _int(self, key: str, limit: int, clamp: bool = False) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if not value.isdigit() or not value.isascii():
            raise SIPError(400, f"Bad {canonical_name(key)}")
        if len(value) > 12 or int(value) > limit:
            if clamp:
                return limit
            raise SIPError(400, f"Bad {canonical_name(key)}")
        return int(value)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255), None when absent."""
        return self._int("max-forwards", 255)

    @property
    def content_length(self) -> int | None:
        """Content-Length, None when absent."""
        return self._int("content-length", 2**31)

    @property
    def expires(self) -> int | None:
        """Expires in seconds, capped at 2**32-1 (RFC 3261 20.19), None when absent."""
        return self._int("expires", 2**32 - 1, clamp=True)

    # -- output --------------------------------------------------------------------------------------------

    def start_line(self) -> str:
        """The Request-Line or Status-Line."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire: the original bytes when unedited, else rebuilt with a right Content-Length."""
        raw = self._raw
        return raw if raw is not None else self._rebuild(self.start_line())

    def _rebuild(self, start_line: str) -> bytes:
        body = self.body
        if self._clen_ok is not body:
            # RFC 3261 18.3 / 20.14: Content-Length states the body's length.
            self._fix_content_length(body)
        raw = "\r\n".join([start_line, *self._lines, "", ""]).encode("utf-8", "surrogateescape") + body
        self._raw = raw
        return raw

    def _fix_content_length(self, body: bytes) -> None:
        keys = self._keys
        length = str(len(body))
        try:
            i = keys.index("content-length")
        except ValueError:
            self._lines.append(f"Content-Length: {length}")
            keys.append("content-length")
        else:
            line = self._lines[i]
            if _value(line) != length:
                self._lines[i] = f"{_name_of(line)}: {length}"
                self._cache.pop("content-length", None)
        self._clen_ok = body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _copy_into(self, other: Message) -> None:
        other._lines = list(self._lines)
        other._keys = list(self._keys)
        other._raw = self._raw
        # Parsed values are shared, not parsed again: they are read-only (an edit replaces the header text
        # and drops the cached value; code that wants a changed value edits a ``copy()`` and sets it).
        other._cache = dict(self._cache)
        other._clen_ok = self._clen_ok
        other.body = self.body
        other.source = self.source
        other.flow = self.flow
        other.version = self.version

    def same_as(self, other: Message) -> bool:
        """Whether both say the same: start line, header names (as keys) and values in order, and body.

        (Messages keep identity equality and hashing: they are mutable and get used as keys.)
        """
        return (
            type(other) is type(self)
            and self.start_line() == other.start_line()
            and [(k, _value(x)) for k, x in zip(self._keys, self._lines, strict=True)]
            == [(k, _value(x)) for k, x in zip(other._keys, other._lines, strict=True)]
            and self.body == other.body
        )


class Request(Message):
    """A SIP request. ``uri`` is parsed on first read; assigning it rewrites the Request-URI."""

    __slots__ = ("_uri", "_uri_snap", "_uri_text", "method")

    is_request: ClassVar[bool] = True

    method: str
    _uri: URI | None
    _uri_text: str
    _uri_snap: str

    def __init__(
        self, method: str, uri: URI | str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        self.method = method
        self._uri = None
        self._uri_text = ""
        self._uri_snap = ""
        self.uri = uri if isinstance(uri, URI) else parse_uri_untrusted(uri)
        self._init_headers(headers, body)

    @classmethod
    def build(
        cls, method: str, uri: URI | str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Request:
        """A new request; Content-Length is set from the body."""
        req = cls(method, uri, headers, body)
        req.set("Content-Length", str(len(body)))
        return req

    @property
    def uri(self) -> URI:
        """The Request-URI (SIPError when it is malformed)."""
        uri = self._uri
        if uri is None:
            uri = self._uri = parse_uri_untrusted(self._uri_text)
            self._uri_snap = str(uri)
        return uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self._uri_snap = ""
        self._raw = None

    def _uri_out(self) -> str:
        # The Request-URI is mutable: a change made in place counts as an edit. Unchanged, the text
        # is written as received.
        uri = self._uri
        if uri is not None:
            text = str(uri)
            if text != self._uri_snap:
                self._uri_snap = self._uri_text = text
                self._raw = None
        return self._uri_text

    def to_bytes(self) -> bytes:
        """The request on the wire (see Message.to_bytes)."""
        if self._uri is not None:
            self._uri_out()
        raw = self._raw
        if raw is None:
            raw = self._rebuild(f"{self.method} {self._uri_text} {self.version}")
        return raw

    def start_line(self) -> str:
        """The Request-Line."""
        return f"{self.method} {self._uri_out()} {self.version}"

    def copy(self) -> Request:
        """An independent copy for a branch to edit."""
        other = Request.__new__(Request)
        self._copy_into(other)
        other.method = self.method
        other._uri = self._uri.copy() if self._uri is not None else None
        other._uri_text = self._uri_text
        other._uri_snap = self._uri_snap
        return other

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_out()}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    status: int
    reason: str

    def __init__(
        self, status: int, reason: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        self.status = status
        self.reason = reason
        self._init_headers(headers, body)

    @classmethod
    def build(
        cls, status: int, reason: str | None, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Response:
        """A new response (reason None: the usual phrase); Content-Length is set from the body."""
        if reason is None:
            from .status import reason_phrase

            reason = reason_phrase(status)
        resp = cls(status, reason, headers, body)
        resp.set("Content-Length", str(len(body)))
        return resp

    def start_line(self) -> str:
        """The Status-Line."""
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        """An independent copy."""
        other = Response.__new__(Response)
        self._copy_into(other)
        other.status = self.status
        other.reason = self.reason
        return other

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"
