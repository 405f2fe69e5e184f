"""One trunk registration as a sans-IO state machine (Kamailio's ``uac`` registrations).

The machine builds REGISTER requests (without Via: the sender adds its own) and reads the final responses;
time is an input. States:

- ``idle``: not started; ``poll`` at or after ``next_deadline()`` sends the first REGISTER.
- ``registering``: a REGISTER is out, waiting for its final response (``on_response`` / ``on_timeout``).
- ``registered``: the registrar accepted; the refresh is due at ``refresh_delay(expires)`` after the 200
  (90% of the interval, at most 5 s before expiry, never earlier than half of it).
- ``unregistering`` / ``unregistered``: ``unregister`` sent a REGISTER with Expires: 0 (a trunk removed,
  or the proxy stopping) / the registrar removed the binding; nothing more is sent.
- ``failed``: a failure (403, 404, 5xx, a challenge answered wrongly, no answer); the next try comes after a
  back-off that doubles with each failure in a row, from ``retry_interval`` up to ``retry_max``
  (Kamailio's ``reg_retry_interval``, made exponential).

A 401/407 with a digest challenge is answered at once with the trunk's credentials (the CSeq grows, RFC
3261 22.2) unless the previous request already answered a challenge that is not ``stale``: then the
credentials are wrong and the registration fails. A 423 retries at once with the registrar's Min-Expires.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from trioproxy.sip import NameAddr, Request, Response, SIPError, new_tag
from trioproxy.sip.headers import split_values

from .digest_client import Challenge, answer_challenge, parse_challenge

__all__ = ["RegState", "Registration", "Trunk", "refresh_delay"]


class RegState(enum.StrEnum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    UNREGISTERING = "unregistering"
    UNREGISTERED = "unregistered"


@dataclass(frozen=True, slots=True)
class Trunk:
    """One ``[[uac.registrations]]`` entry or ``uacreg`` row (Kamailio's column names)."""

    l_uuid: str  # local id: the Contact user the provider sends incoming calls to
    l_username: str  # local user those calls are for (uac_reg_lookup)
    l_domain: str
    r_username: str  # the account at the provider (From/To of the REGISTER)
    r_domain: str  # the provider's domain (Request-URI of the REGISTER)
    realm: str = ""  # the digest realm expected ("": any)
    auth_username: str = ""  # "": r_username
    auth_password: str = ""
    auth_proxy: str = ""  # where REGISTERs go ("sip:host:port"); "": r_domain
    expires: int = 3600

    @property
    def auth_user(self) -> str:
        return self.auth_username or self.r_username

    def matches_realm(self, realm: str) -> bool:
        """Whether this entry's credentials are for ``realm`` (its realm, or its domain without one)."""
        return realm.lower() == (self.realm or self.r_domain).lower()


def refresh_delay(expires: int) -> float:
    """Seconds after a successful REGISTER when the refresh goes out."""
    return max(expires / 2, min(expires * 0.9, expires - 5.0))


@dataclass
class Registration:
    """The registration of one trunk (see the module docstring)."""

    trunk: Trunk
    contact: str  # our Contact URI (sip:l_uuid@our-address)
    retry_interval: float = 60.0
    retry_max: float = 600.0
    state: RegState = RegState.IDLE
    deadline: float = 0.0  # when poll() sends next (idle, registered, failed)
    expires_at: float | None = None  # when the current binding at the registrar ends
    granted: int = 0  # the expiry the registrar granted last
    failures: int = 0  # failures in a row (the back-off exponent)
    last_status: int = 0  # status of the last final response (408: none came)
    last_reason: str = ""
    registered_count: int = 0  # successful REGISTERs
    failed_count: int = 0
    call_id: str = field(default_factory=lambda: os.urandom(10).hex())
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    _expires: int = 0  # the expiry asked for (raised by a 423)
    _answered: Challenge | None = None  # the challenge the request in flight answered
    _nc: int = 0
    _removing: bool = False  # unregister() was called: Expires 0, and no refresh after it

    def __post_init__(self) -> None:
        self._expires = self.trunk.expires

    # -- outputs ---------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to send (None while a REGISTER is out, or after ``unregister``)."""
        return None if self._removing or self.state is RegState.REGISTERING else self.deadline

    def poll(self, now: float) -> Request | None:
        """The REGISTER to send now, if one is due."""
        if self._removing or self.state is RegState.REGISTERING or now < self.deadline:
            return None
        self._answered = None
        return self._register(None)

    def unregister(self, now: float) -> Request | None:
        """The REGISTER with Expires: 0 removing our binding; None when none may be in force (never
        registered, expired, or already removed). Afterwards ``poll`` sends nothing more."""
        in_force = self.is_registered(now) or self.state is RegState.REGISTERING
        if self._removing or not in_force:
            self._removing = True
            return None
        self._removing = True
        self._answered = None
        return self._register(None)

    @property
    def removing(self) -> bool:
        """Whether ``unregister`` was called (the registration sends nothing more of its own)."""
        return self._removing

    def is_registered(self, now: float) -> bool:
        return self.expires_at is not None and now < self.expires_at

    # -- inputs ----------------------------------------------------------------------------------------

    def on_response(self, response: Response, now: float) -> Request | None:
        """A final response to the REGISTER in flight; returns the next request to send now (a challenge
        answered, a 423 retried), or None."""
        if self.state not in (RegState.REGISTERING, RegState.UNREGISTERING) or response.status < 200:
            return None
        status = response.status
        self.last_status, self.last_reason = status, response.reason
        if 200 <= status < 300:
            if self._removing:
                self.state, self.expires_at = RegState.UNREGISTERED, None
            else:
                self._registered(response, now)
            return None
        if status in (401, 407):
            header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            challenge = self._pick(response.get_all(header))
            if challenge is not None and (self._answered is None or challenge.stale):
                request = self._register((status, challenge))
                if request is not None:
                    return request
        if status == 423:
            min_expires = response.get("Min-Expires")
            if min_expires is not None and min_expires.strip().isdigit() and self._expires < int(min_expires):
                self._expires = int(min_expires)
                self._answered = None
                return self._register(None)
        self._failed(now)
        return None

    def on_timeout(self, now: float) -> None:
        """The REGISTER in flight got no final response (Timer F) or could not be sent."""
        if self.state in (RegState.REGISTERING, RegState.UNREGISTERING):
            self.last_status, self.last_reason = 408, "Request Timeout"
            self._failed(now)

    # -- internals -------------------------------------------------------------------------------------

    def _pick(self, values: list[str]) -> Challenge | None:
        for value in values:
            challenge = parse_challenge(value)
            if challenge is None:
                continue
            if not self.trunk.realm or self.trunk.matches_realm(challenge.realm):
                return challenge
        return None

    def _register(self, auth: tuple[int, Challenge] | None) -> Request | None:
        t = self.trunk
        self.cseq += 1
        aor = f"sip:{t.r_username}@{t.r_domain}"
        uri = f"sip:{t.r_domain}"
        headers = [
            ("Max-Forwards", "70"),
            ("From", f"<{aor}>;tag={self.from_tag}"),
            ("To", f"<{aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{self.contact}>"),
            ("Expires", "0" if self._removing else str(self._expires)),
            ("User-Agent", "trioproxy"),
        ]
        if auth is not None:
            status, challenge = auth
            self._nc = (
                self._nc + 1 if self._answered is not None and self._answered.nonce == challenge.nonce else 1
            )
            value = answer_challenge(challenge, t.auth_user, t.auth_password, "REGISTER", uri, nc=self._nc)
            if value is None:
                self.cseq -= 1
                return None
            headers.append(("Authorization" if status == 401 else "Proxy-Authorization", value))
            self._answered = challenge
        self.state = RegState.UNREGISTERING if self._removing else RegState.REGISTERING
        return Request.build("REGISTER", uri, headers)

    def _granted(self, response: Response) -> int:
        for value in response.get_all("Contact"):
            try:
                contacts = [NameAddr.parse_untrusted(v) for v in _split(value)]
            except SIPError:
                continue
            for c in contacts:
                value = (c.params.get("expires") or "").strip()
                if c.uri.user == self.trunk.l_uuid and value.isdigit():
                    return int(value)
        header = response.get("Expires")
        if header is not None and header.strip().isdigit():
            return int(header)
        return self._expires

    def _registered(self, response: Response, now: float) -> None:
        granted = self._granted(response)
        self.state = RegState.REGISTERED
        self.failures = 0
        self.registered_count += 1
        self.granted = granted
        if granted <= 0:  # the registrar removed the binding: register again after the back-off
            self.expires_at = None
            self.deadline = now + self.retry_interval
            return
        self.expires_at = now + granted
        self.deadline = now + refresh_delay(granted)

    def _failed(self, now: float) -> None:
        self.state = RegState.FAILED
        self.failures += 1
        self.failed_count += 1
        self._answered = None
        if self.expires_at is not None and now >= self.expires_at:
            self.expires_at = None
        self.deadline = now + min(self.retry_interval * 2 ** min(self.failures - 1, 30), self.retry_max)


def _split(value: str) -> list[str]:
    try:
        return split_values(value)
    except SIPError:
        return []
