"""One SIP dialog as the proxy sees it pass (RFC 3261 12), as a sans-IO state machine with time as an input.

A ``Dialog`` starts *unconfirmed* when the route script manages the initial INVITE (``dlg_manage``), turns
*early* on a provisional carrying a To tag, *confirmed* on the first 2xx (its ACK is recorded, it does not
change the state: Kamailio's ``confirmed_na`` and ``confirmed`` are one state here), and *terminated* on a
BYE in either direction, a final non-2xx before any 2xx (which is also what a CANCEL leads to: the 487),
the end of its lifetime, or ``dlg_bye``. Every transition takes ``now`` (seconds since the epoch) and
returns whether it changed anything; nothing here sends or sleeps.

A dialog records what the proxy needs to end it on its own (``bye_requests``): both parties' Contacts and
tags, the Record-Route set of the 2xx, and the highest CSeq seen from each side.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from trioproxy.sip import URI, NameAddr, Request, Response, SIPError

__all__ = ["Dialog", "DialogState", "EndReason"]


class DialogState(enum.Enum):
    UNCONFIRMED = "unconfirmed"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class EndReason(enum.Enum):
    BYE = "bye"
    FAILED = "failed"  # a final non-2xx to the INVITE (a CANCEL ends so too: its 487)
    LIFETIME = "lifetime"  # [dialog] max_lifetime reached: the proxy sent BYE to both sides
    DLG_BYE = "dlg_bye"  # the script's KSR.dialog.dlg_bye


@dataclass(eq=False)
class Dialog:
    """One tracked dialog; build with ``Dialog.from_invite``."""

    id: int
    call_id: str
    from_tag: str
    from_uri: str
    to_uri: str
    ruri: str
    caller_contact: str
    caller_cseq: int
    start: float
    lifetime: float
    source: str = ""  # where the INVITE came from (transport:ip:port)
    destination: str = ""  # where it was sent ($du or R-URI of the relay)
    to_tag: str | None = None
    callee_contact: str = ""
    callee_cseq: int = 0
    route_set: list[str] = field(default_factory=list)  # Record-Route values of the 2xx, topmost first
    state: DialogState = DialogState.UNCONFIRMED
    early_at: float | None = None
    answer: float | None = None
    acked: bool = False
    end: float | None = None
    status: int = 0  # the final status of the INVITE (0: none yet)
    reason: str = ""
    end_reason: EndReason | None = None
    profiles: set[tuple[str, str]] = field(default_factory=set)  # (profile, value: "" without value)
    extra: dict[str, str] = field(default_factory=dict)  # accounting extra fields, taken at the INVITE
    cdr: bool = True  # write a CDR when it ends ([acc] cdr_flag)

    @classmethod
    def from_invite(
        cls, ident: int, invite: Request, now: float, lifetime: float, source: str = ""
    ) -> Dialog:
        """A dialog for an initial INVITE (SIPError 400 when its From, Call-ID or CSeq are unusable)."""
        tag = invite.from_.tag
        if not tag:
            raise SIPError(400, "Missing From Tag")
        contacts = invite.contacts
        return cls(
            id=ident,
            call_id=invite.call_id,
            from_tag=tag,
            from_uri=str(invite.from_.uri),
            to_uri=str(invite.to.uri),
            ruri=str(invite.uri),
            caller_contact=str(contacts[0].uri) if contacts else "",
            caller_cseq=invite.cseq.seq,
            start=now,
            lifetime=lifetime,
            source=source,
        )

    # -- what it is --

    @property
    def active(self) -> bool:
        return self.state is not DialogState.TERMINATED

    @property
    def duration(self) -> float:
        """Seconds from the answer to the end (0 for a call never answered; so far, while it lasts)."""
        if self.answer is None:
            return 0.0
        return max(0.0, (self.end if self.end is not None else self.answer) - self.answer)

    def expires_at(self) -> float:
        return self.start + self.lifetime

    def matches(self, call_id: str, from_tag: str | None, to_tag: str | None) -> bool:
        """Whether an in-dialog message with these identifiers belongs here, in either direction."""
        if call_id != self.call_id or self.to_tag is None:
            return False
        return (from_tag, to_tag) in ((self.from_tag, self.to_tag), (self.to_tag, self.from_tag))

    def as_dict(self) -> dict[str, object]:
        """The management API's view."""
        return {
            "id": self.id,
            "call_id": self.call_id,
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "from_uri": self.from_uri,
            "to_uri": self.to_uri,
            "state": self.state.value,
            "start": self.start,
            "answer": self.answer,
            "end": self.end,
            "duration": round(self.duration, 3),
            "expires": self.expires_at(),
            "profiles": sorted(f"{p}={v}" if v else p for p, v in self.profiles),
            "caller_contact": self.caller_contact,
            "callee_contact": self.callee_contact,
        }

    # -- transitions (each returns whether the dialog changed) --

    def on_response(self, response: Response, now: float) -> bool:
        """A response to the INVITE on its way to the caller."""
        if not self.active or response.cseq.method != "INVITE":
            return False
        status = response.status
        tag = response.to.tag
        if status < 200:
            if status > 100 and tag and self.state is DialogState.UNCONFIRMED:
                self.state = DialogState.EARLY
                self.early_at = now
                return True
            return False
        if status < 300:
            if self.state is DialogState.CONFIRMED:
                return False  # a retransmission, or a second 2xx of a forked call: the first one won
            self.state = DialogState.CONFIRMED
            self.answer = now
            self.status, self.reason = status, response.reason
            self.to_tag = tag or ""
            contacts = response.contacts
            self.callee_contact = str(contacts[0].uri) if contacts else ""
            self.route_set = list(response.get_all("Record-Route"))
            return True
        if self.state is DialogState.CONFIRMED:
            return False
        self.status, self.reason = status, response.reason
        self.terminate(now, EndReason.FAILED)
        return True

    def on_request(self, request: Request, now: float) -> bool:
        """An in-dialog request passing the proxy (already matched); a BYE ends the dialog."""
        if not self.active:
            return False
        seq = request.cseq.seq
        if request.method != "ACK":
            if request.from_.tag == self.from_tag:
                self.caller_cseq = max(self.caller_cseq, seq)
            else:
                self.callee_cseq = max(self.callee_cseq, seq)
        if request.method == "ACK":
            changed = not self.acked
            self.acked = True
            return changed
        if request.method == "BYE":
            self.terminate(now, EndReason.BYE)
            return True
        return False

    def terminate(self, now: float, why: EndReason) -> bool:
        if not self.active:
            return False
        self.state = DialogState.TERMINATED
        self.end = now
        self.end_reason = why
        return True

    def expired(self, now: float) -> bool:
        return self.active and now >= self.expires_at()

    # -- ending it from the proxy --

    def bye_requests(self, is_myself: Callable[[URI], bool] | None = None) -> list[tuple[str, Request]]:
        """The BYEs that end a confirmed dialog: (``"caller"``/``"callee"``, request), each carrying the
        recorded route set (without this proxy's own entries, recognised by ``is_myself(uri) -> bool``),
        the next CSeq of its side, and the Request-URI of the party's Contact. The caller adds a Via."""
        if self.state is not DialogState.CONFIRMED or not self.to_tag:
            return []
        entries = list(self.route_set)
        own = [i for i, v in enumerate(entries) if is_myself is not None and _is_own(v, is_myself)]
        cut = own[0] if own else len(entries)
        towards_callee = list(reversed(entries[:cut]))  # RR order is callee-side first
        towards_caller = entries[(own[-1] + 1) if own else len(entries) :]
        out: list[tuple[str, Request]] = []
        if self.callee_contact:
            self.caller_cseq += 1
            out.append(
                (
                    "callee",
                    self._bye(
                        self.callee_contact,
                        self.from_uri,
                        self.from_tag,
                        self.to_uri,
                        self.to_tag,
                        self.caller_cseq,
                        towards_callee,
                    ),
                )
            )
        if self.caller_contact:
            self.callee_cseq = max(self.callee_cseq, 0) + 1
            out.append(
                (
                    "caller",
                    self._bye(
                        self.caller_contact,
                        self.to_uri,
                        self.to_tag,
                        self.from_uri,
                        self.from_tag,
                        self.callee_cseq,
                        towards_caller,
                    ),
                )
            )
        return out

    def _bye(
        self,
        target: str,
        from_uri: str,
        from_tag: str,
        to_uri: str,
        to_tag: str,
        cseq: int,
        routes: list[str],
    ) -> Request:
        headers = [
            ("From", f"<{from_uri}>;tag={from_tag}"),
            ("To", f"<{to_uri}>;tag={to_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} BYE"),
            ("Max-Forwards", "70"),
            *(("Route", r) for r in routes),
            ("Reason", 'SIP;cause=200;text="dialog ended by the proxy"'),
        ]
        return Request.build("BYE", target, headers)


def _is_own(value: str, is_myself: Callable[[URI], bool]) -> bool:
    try:
        uri = NameAddr.parse_untrusted(value).uri
    except SIPError:
        return False
    return bool(is_myself(uri))
