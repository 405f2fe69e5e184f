"""Overload shedding at the UDP ingress, on a datagram's raw bytes: no Message, no transaction, no task.

Theory of operation
-------------------
``IngressShedder.screen(data, ip, port)`` runs on each received datagram before the parser, and applies the
verdicts of an ``OverloadDetector``. While the proxy is calm (shedding level 0, the last lag under
``lag_low``, nothing refused lately) it reads three attributes and answers ``None``: go on, parse and deliver.
Otherwise it reads the start line and the header lines' raw text (never the body):

- responses, CANCEL, requests with a To tag (in-dialog) pass, and so does anything it cannot read cheaply
  (no blank line ending the head, a folded header line, a missing Via/From/To/Call-ID/CSeq): the full
  parser and the proxy core decide about those;
- an ACK carrying the To tag of one of our 503s (a caller acknowledging its refusal) is absorbed: dropped,
  with nothing to parse, route or match;
- a new out-of-dialog request (no To tag: INVITE, REGISTER, OPTIONS, SUBSCRIBE ...) is keyed by its top Via
  branch. A branch refused before gets the same bytes again (a retransmission is absorbed, the caller sees
  one answer); a branch admitted before passes (its transaction exists or is queued: the transaction table
  absorbs it); otherwise ``detector.shed()`` decides. Admitted: remembered, passed on. Refused: answered
  with ``503 Service Unavailable`` + ``Retry-After`` built from the request's own Via, From, To (plus a tag of
  ours), Call-ID and CSeq lines, sent to the datagram's source address (never to a Via, which could name a
  third party); or, with ``action = "drop"``, not answered (``b""``).

Both branch memories are bounded (``remember`` entries each, the oldest forgotten first) and are emptied
once ``linger`` seconds passed since the last refusal, so memory returns to nothing when the load falls.
The top Via of a 503 gets ``received`` (and the value of an empty ``rport``, RFC 3581) as a server
transport would add them (RFC 3261 18.2.1).
"""

from __future__ import annotations

import re
import secrets

from .overload import OverloadDetector

__all__ = ["IngressShedder"]

_VIA, _FROM, _TO, _CALL_ID, _CSEQ = range(1, 6)
# One header line of those a 503 copies, by its group: a line start, the name (long or compact form), a colon.
_HEADER = re.compile(rb"\n(?:(via|v)|(from|f)|(to|t)|(call-id|i)|(cseq))[ \t]*:[^\r\n]*", re.IGNORECASE)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_SENT_BY = re.compile(
    rb"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*[A-Za-z]+[ \t]+(\[[^\]]*\]|[^ \t;:,]+)", re.IGNORECASE
)
_RPORT = re.compile(rb";[ \t]*rport(?=[ \t]*(?:;|$))", re.IGNORECASE)


class IngressShedder:
    """Per-datagram shedding verdicts on raw bytes (see the module docstring); one per process."""

    def __init__(
        self,
        detector: OverloadDetector,
        *,
        action: str = "503",
        retry_after: int = 2,
        remember: int = 8192,
        linger: float = 32.0,
    ) -> None:
        if action not in ("503", "drop"):
            raise ValueError("action must be '503' or 'drop'")
        self.detector = detector
        self.action = action
        self.retry_after = retry_after
        self.remember = remember
        self.linger = linger  # seconds after the last refusal the branch memories are kept
        self._refused: dict[bytes, bytes] = {}  # branch -> the answer it got (b"": dropped)
        self._admitted: dict[bytes, None] = {}
        self._last_refusal = 0.0
        self._tag = b"sh" + secrets.token_hex(5).encode()
        self._ack_mark = b"tag=" + self._tag
        self._sequence = 0

    def __len__(self) -> int:
        """Branches remembered now (refused and admitted)."""
        return len(self._refused) + len(self._admitted)

    def screen(self, data: bytes, ip: str, port: int) -> bytes | None:
        """``None``: pass the datagram on; ``b""``: drop it; other bytes: send them to its source instead."""
        det = self.detector
        if det.level <= 0.0 and det.lag < det.config.lag_low:
            if not self._refused and not self._admitted:
                return None
            if det.now - self._last_refusal > self.linger:
                self._refused.clear()
                self._admitted.clear()
                return None
        if data.startswith(b"SIP/"):
            return None
        space = data.find(b" ", 0, 32)
        if space <= 0:
            return None
        method = data[:space]
        if method == b"ACK":
            if self._ack_mark in data:
                det.stats.absorbed += 1
                return b""
            return None
        if method == b"CANCEL":
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0:
            end = data.find(b"\n\n")
            if end < 0:
                return None
        head = data[:end]
        if b"\n " in head or b"\n\t" in head:
            return None  # a folded header line (obsolete): left to the parser
        vias: list[bytes] = []
        found: list[bytes | None] = [None, None, None, None, None, None]
        for match in _HEADER.finditer(data, 0, end):
            kind = match.lastindex
            if kind == _VIA:
                vias.append(match.group()[1:].rstrip())
            elif kind is not None and found[kind] is None:
                found[kind] = match.group()[1:].rstrip()
        frm, to, call_id, cseq = found[_FROM], found[_TO], found[_CALL_ID], found[_CSEQ]
        if not vias or frm is None or to is None or call_id is None or cseq is None:
            return None
        value = to[to.find(b":") + 1 :]
        bracket = value.rfind(b">")
        if _TAG.search(value, bracket + 1 if bracket >= 0 else 0):
            return None  # in-dialog
        top = vias[0]
        branch = _BRANCH.search(top.split(b",", 1)[0], top.find(b":") + 1)
        key = branch.group(1) if branch is not None else None
        if key is not None:
            answer = self._refused.get(key)
            if answer is not None:
                det.stats.absorbed += 1
                return answer
            if key in self._admitted:
                return None
        if not det.shed():
            if key is not None:
                self._note(self._admitted, key, None)
            return None
        if self.action == "503":
            answer = self._service_unavailable(vias, frm, to, call_id, cseq, ip, port)
        else:
            answer = b""
        if key is not None:
            self._note(self._refused, key, answer)
        self._last_refusal = det.now
        return answer

    def _note(self, memory: dict[bytes, bytes] | dict[bytes, None], key: bytes, value: bytes | None) -> None:
        if len(memory) >= self.remember:
            del memory[next(iter(memory))]
        memory[key] = value  # type: ignore[assignment]

    def _service_unavailable(
        self, vias: list[bytes], frm: bytes, to: bytes, call_id: bytes, cseq: bytes, ip: str, port: int
    ) -> bytes:
        self._sequence += 1
        tag = b"%s%x" % (self._tag, self._sequence)
        head = [b"SIP/2.0 503 Service Unavailable", _with_source(vias[0], ip, port), *vias[1:], frm,
                to + b";tag=" + tag, call_id, cseq, b"Retry-After: %d" % self.retry_after,
                b"Content-Length: 0", b"", b""]  # fmt: skip
        return b"\r\n".join(head)


def _with_source(line: bytes, ip: str, port: int) -> bytes:
    """The top Via header line with ``received`` (and an empty ``rport`` filled) for a datagram from ip:port."""
    colon = line.find(b":")
    name, value = line[: colon + 1], line[colon + 1 :]
    first, comma, rest = value.partition(b",")
    source = ip.encode()
    sent_by = _SENT_BY.match(first)
    host = sent_by.group(1).strip(b"[]") if sent_by is not None else b""
    marked, n = _RPORT.subn(b";rport=%d" % port, first, count=1)
    if n or host.lower() != source.lower():
        marked = marked.rstrip() + b";received=" + source
    return name + marked + comma + rest
