"""Destination sets as Kamailio's dispatcher module keeps them: the list format, the states, the algorithms.

No I/O. A list line is ``setid destination [flags [priority [attrs]]]`` (``#`` starts a comment), e.g.
``1 sip:10.0.0.1:5060 0 10 weight=50;duid=ms1``. Within a set destinations are ordered by priority, highest
first (file order among equals). The state of a destination is Kamailio's bit set: inactive (``i``), trying
(``t``), disabled (``d``) and probing (``p``); a list's ``flags`` column sets the initial bits (1 inactive,
2 trying, 4 disabled, 8 probing). Selection skips inactive and disabled destinations.

Algorithms (``select``): 0 hash of the Call-ID, 1 hash of the From URI (user@host:port), 4 round robin
shared by every call of the set, 8 priority order (the first active), 9 weight (``weight=`` attribute, a
smooth weighted round robin: over any 100 selections each active destination gets its share). The answer is
the selected destination followed by the other active ones in set order after it: the failover order of
``ds_next_dst``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trioproxy.sip import URI, SIPError, parse_uri_untrusted

__all__ = [
    "ALGORITHMS",
    "DS_DISABLED",
    "DS_INACTIVE",
    "DS_PROBING",
    "DS_TRYING",
    "Destination",
    "DispatcherError",
    "DispatcherSets",
    "make_destination",
    "parse_list",
    "parse_state",
]

DS_INACTIVE, DS_TRYING, DS_DISABLED, DS_PROBING = 1, 2, 4, 8
ALGORITHMS = (0, 1, 4, 8, 9)
_STATE_LETTERS = {"a": 0, "i": DS_INACTIVE, "t": DS_TRYING, "d": DS_DISABLED, "p": DS_PROBING}


class DispatcherError(ValueError):
    """A list that cannot be used; ``line`` is 0 when not about one line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


def parse_state(text: str) -> tuple[int, int] | None:
    """``ds_mark_dst_state`` letters (``a``, ``i``, ``t``, ``d``, ``p`` and combinations such as ``ip``)
    into (bits to set, bits to clear); None when a letter is unknown."""
    text = text.strip().lower()
    if not text or any(c not in _STATE_LETTERS for c in text):
        return None
    bits = 0
    for c in text:
        bits |= _STATE_LETTERS[c]
    # "a" clears inactive, trying and disabled; "ip" sets inactive and probing and clears the others.
    return bits, (DS_INACTIVE | DS_TRYING | DS_DISABLED) & ~bits


@dataclass(eq=False, slots=True)
class Destination:
    """One destination of a set, with its state and probe record."""

    setid: int
    uri: str
    parsed: URI
    flags: int = 0  # the list's column (initial state)
    priority: int = 0
    attrs: str = ""
    state: int = 0
    weight: int = 0
    duid: str = ""
    current_weight: int = 0  # smooth weighted round robin
    probes_ok: int = 0
    probes_failed: int = 0
    last_probe_status: int | None = None  # the answer's status, 408 for no answer, 503 for a send failure
    last_change: float = 0.0

    @property
    def active(self) -> bool:
        return not self.state & (DS_INACTIVE | DS_DISABLED)

    @property
    def host(self) -> str:
        return self.parsed.host.strip("[]").lower()

    @property
    def port(self) -> int:
        return self.parsed.port or (5061 if self.parsed.scheme == "sips" else 5060)

    def state_text(self, probing_all: bool = False) -> str:
        """Kamailio's two-letter state: A/I/T/D then P (probed) or X."""
        first = "A"
        for bit, letter in ((DS_TRYING, "T"), (DS_INACTIVE, "I"), (DS_DISABLED, "D")):
            if self.state & bit:
                first = letter
        probed = (self.state & DS_PROBING or probing_all) and not self.state & DS_DISABLED
        return first + ("P" if probed else "X")

    def as_dict(self, probing_all: bool = False) -> dict[str, object]:
        return {
            "set": self.setid, "uri": self.uri, "flags": self.flags, "priority": self.priority,
            "attrs": self.attrs, "state": self.state_text(probing_all), "active": self.active,
            "probes_ok": self.probes_ok, "probes_failed": self.probes_failed,
            "last_probe_status": self.last_probe_status,
        }  # fmt: skip


def _attrs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        key, _, value = part.partition("=")
        if key.strip():
            out[key.strip().lower()] = value.strip()
    return out


def make_destination(
    setid: int, uri: str, flags: int = 0, priority: int = 0, attrs: str = "", line: int = 0
) -> Destination:
    """A destination from a list line's columns (``DispatcherError`` when one is invalid)."""
    try:
        parsed = parse_uri_untrusted(uri)
    except SIPError as exc:
        raise DispatcherError(line, f"bad destination {uri!r}: {exc.reason}") from None
    if parsed.scheme not in ("sip", "sips") or not parsed.host:
        raise DispatcherError(line, f"bad destination {uri!r}: not a sip: or sips: URI with a host")
    a = _attrs(attrs)
    try:
        weight = int(a.get("weight", "0") or 0)
    except ValueError:
        raise DispatcherError(line, f"bad weight in {attrs!r}") from None
    if not 0 <= weight <= 100:
        raise DispatcherError(line, f"weight must be 0..100 in {attrs!r}")
    return Destination(setid, uri, parsed, flags, priority, attrs, flags & 15, weight, a.get("duid", ""))


def parse_list(text: str) -> list[Destination]:
    """Read a ``dispatcher.list`` text (``DispatcherError`` naming the first bad line)."""
    out: list[Destination] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cols = line.split(None, 4)
        if len(cols) < 2:
            raise DispatcherError(number, "expected: setid destination [flags [priority [attrs]]]")
        try:
            setid = int(cols[0])
            flags = int(cols[2]) if len(cols) > 2 else 0
            priority = int(cols[3]) if len(cols) > 3 else 0
        except ValueError:
            raise DispatcherError(number, "setid, flags and priority must be integers") from None
        if setid < 0 or not 0 <= flags < 2**16:
            raise DispatcherError(number, "setid must be >= 0 and flags 0..65535")
        out.append(
            make_destination(setid, cols[1], flags, priority, cols[4] if len(cols) > 4 else "", number)
        )
    return out


def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


@dataclass(eq=False)
class DispatcherSets:
    """The destination sets, by id, and the round-robin positions shared by every call."""

    sets: dict[int, list[Destination]] = field(default_factory=dict)
    _rr: dict[int, int] = field(default_factory=dict)

    @classmethod
    def build(cls, destinations: Iterable[Destination]) -> DispatcherSets:
        sets: dict[int, list[Destination]] = {}
        for d in destinations:
            sets.setdefault(d.setid, []).append(d)
        for members in sets.values():
            members.sort(key=lambda d: -d.priority)  # stable: file order among equal priorities
        return cls(dict(sorted(sets.items())))

    def destinations(self) -> list[Destination]:
        return [d for members in self.sets.values() for d in members]

    def keep_states(self, old: DispatcherSets) -> None:
        """After a reload: destinations still listed (same set and URI) keep the state the old ones had
        earned from probes and marks; new ones start from their flags."""
        known = {(d.setid, d.uri): d for d in old.destinations()}
        for d in self.destinations():
            prev = known.get((d.setid, d.uri))
            if prev is not None and not d.flags & (DS_INACTIVE | DS_DISABLED):
                d.state = (prev.state & ~DS_PROBING) | (d.flags & DS_PROBING)
                d.probes_ok, d.probes_failed, d.last_probe_status = (
                    prev.probes_ok,
                    prev.probes_failed,
                    prev.last_probe_status,
                )

    def select(self, setid: int, alg: int, call_id: str = "", from_uri: str = "") -> list[Destination]:
        """The selected destination then the failover order (empty: no such set or none active)."""
        members = self.sets.get(setid)
        if not members:
            return []
        n = len(members)
        active = [i for i, d in enumerate(members) if d.active]
        if not active:
            return []
        if alg == 0:
            start = _hash(call_id) % n
        elif alg == 1:
            start = _hash(from_uri) % n
        elif alg == 4:
            start = (self._rr.get(setid, -1) + 1) % n
        elif alg == 9:
            start = self._weighted(members, active)
        else:  # 8 and anything unknown: priority order
            start = 0
        order = [(start + k) % n for k in range(n)]
        chosen = [members[i] for i in order if members[i].active]
        if alg == 4:
            self._rr[setid] = members.index(chosen[0])
        return chosen

    @staticmethod
    def _weighted(members: Sequence[Destination], active: Sequence[int]) -> int:
        total = sum(members[i].weight for i in active)
        if total <= 0:
            return active[0]
        best = active[0]
        for i in active:
            d = members[i]
            d.current_weight += d.weight
            if d.current_weight > members[best].current_weight:
                best = i
        members[best].current_weight -= total
        return best

    def find(self, uri: str, setid: int | None = None) -> list[Destination]:
        """Destinations whose URI is ``uri`` (or whose host:port it names), in ``setid`` or any set."""
        try:
            target = parse_uri_untrusted(uri)
        except SIPError:
            return []
        host = target.host.strip("[]").lower()
        port = target.port or (5061 if target.scheme == "sips" else 5060)
        out = []
        for d in self.destinations():
            if setid is not None and d.setid != setid:
                continue
            if d.uri == uri or (d.host == host and d.port == port):
                out.append(d)
        return out

    def from_list(self, ip: str, port: int, group: int) -> Destination | None:
        """The first destination of ``group`` (-1: any set) at ``ip`` and ``port`` (0 matches any)."""
        ip = ip.strip("[]").lower()
        for d in self.destinations():
            if group >= 0 and d.setid != group:
                continue
            if d.host == ip and (port == 0 or d.parsed.port == 0 or d.port == port):
                return d
        return None
