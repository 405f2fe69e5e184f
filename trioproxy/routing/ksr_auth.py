"""``KSR.auth``, ``KSR.auth_db``: digest authentication of requests (RFC 3261 22, RFC 7616, RFC 8760).

Kamailio's names and return codes: 1 authenticated; -1 error (no such table, unusable credentials), -2
invalid password, -3 unknown user, -4 stale or foreign nonce, -5 no credentials for the realm, -6 nonce
reused (a nonce-count not above the last one), -8 the authenticated user is not the one in From (To for
REGISTER). Checks are synchronous lookups in the operator tables' in-memory snapshot; the challenges send
the transaction's final reply, so they are effects (``AUTH_EFFECT_SHIMS`` / ``AUTH_HANDLERS``, merged into
the bridge's tables by ``script.py``). A realm may hold pseudo-variables (``"$fd"``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from trioproxy.auth import (
    Credentials,
    NonceState,
    build_challenge,
    ha1,
    parse_credentials,
    verify_response,
)
from trioproxy.sip import Request, SIPError

from .auth_service import AuthService, current_auth_service
from .ksr_core import _Mod
from .pv import get_pv
from .services import RouteServices
from .state import RequestState

__all__ = ["AUTH_EFFECT_SHIMS", "AUTH_HANDLERS", "Auth", "AuthDb", "expand_realm"]

log = logging.getLogger("trioproxy.auth")

OK, ERROR, INVALID_PASSWORD, USER_UNKNOWN, STALE_NONCE, NO_CREDENTIALS, NONCE_REUSED, USER_MISMATCH = (
    1, -1, -2, -3, -4, -5, -6, -8,
)  # fmt: skip
_FAILURE_REASON = {
    ERROR: "bad_credentials", INVALID_PASSWORD: "invalid_password", USER_UNKNOWN: "unknown_user",
    NONCE_REUSED: "nonce_reused", USER_MISMATCH: "user_mismatch",
}  # fmt: skip
_PV_IN_TEXT = re.compile(r"\$\w+(?:\([^()]*\))?")
_CRED_HEADERS = ("Authorization", "Proxy-Authorization")


def expand_realm(state: RequestState, realm: str) -> str:
    """``realm`` with its pseudo-variables replaced (``"$fd"`` -> the From domain); lowercased."""
    text = str(realm or "")
    if "$" in text:
        text = _PV_IN_TEXT.sub(lambda m: str(get_pv(state, m.group(0)) or ""), text)
    return text.lower()


def _cred_header(state: RequestState) -> str:
    # RFC 3261 22.1: a registrar (REGISTER) challenges with 401 and reads Authorization; a proxy reads
    # Proxy-Authorization.
    return "Authorization" if state.method == "REGISTER" else "Proxy-Authorization"


def find_credentials(msg: Request, header: str, realm: str) -> Credentials | None:
    """The first digest credentials in ``header`` for ``realm`` (compared case-insensitively)."""
    for value in msg.get_all(header):
        creds = parse_credentials(value)
        if creds is not None and creds.realm.lower() == realm:
            return creds
    return None


def _source(state: RequestState) -> str | None:
    src = state.msg.source
    return src.host if src is not None else None


def _identity_matches(state: RequestState, creds: Credentials, realm: str, also_from: bool) -> bool:
    req = state.req
    try:
        uris = [req.to.uri] if state.method == "REGISTER" else [req.from_.uri]
        if also_from and state.method == "REGISTER":
            uris.append(req.from_.uri)
    except SIPError:
        return False
    return all(u.user == creds.username and u.host.lower() == realm for u in uris)


class _Checker:
    """One credentials check against an HA1 source."""

    def __init__(self, service: AuthService, state: RequestState) -> None:
        self.service = service
        self.state = state
        self.creds: Credentials | None = None  # the credentials that passed

    def fail(self, code: int, creds: Credentials | None) -> int:
        reason = _FAILURE_REASON.get(code)
        if reason is not None:
            user = f"{creds.username}@{creds.realm.lower()}" if creds is not None else None
            self.service.failures.record(reason, _source(self.state), user)
            log.info("auth failed (%s) for %s from %s", reason, user, _source(self.state))
        return code

    def check(self, realm: str, header: str, ha1_of: Callable[[Credentials], str | None] | None) -> int:
        """``ha1_of(creds)`` gives the HA1 for the credentials' user and algorithm (None: unknown user);
        None for ``ha1_of`` means look the user up in the subscriber table."""
        state, service = self.state, self.service
        creds = find_credentials(state.req, header, realm)
        if creds is None:
            return NO_CREDENTIALS
        if creds.algorithm not in service.algorithms:
            return self.fail(ERROR, creds)
        nonce_state = service.nonces.check(creds.nonce, realm)
        if nonce_state is not NonceState.VALID:
            return STALE_NONCE
        if ha1_of is None:
            sub = service.snapshot.subscriber(creds.username, realm)
            if sub is None:
                return self.fail(USER_UNKNOWN, creds)
            value = sub.ha1_sha256 if creds.algorithm == "SHA-256" else sub.ha1_md5
        else:
            value = ha1_of(creds)
        if not value:
            return self.fail(ERROR, creds)
        if not verify_response(creds, value, state.method):
            return self.fail(INVALID_PASSWORD, creds)
        minted = service.nonces.timestamp(creds.nonce) or 0.0
        used = service.counts.use(creds.nonce, minted, creds.nc_value or 0)
        if used is NonceState.STALE:
            return STALE_NONCE
        if used is not NonceState.VALID:
            return self.fail(NONCE_REUSED, creds)
        self.creds = creds
        return OK


def _table_ok(table: str) -> bool:
    if str(table) != "subscriber":
        log.error('auth: unknown table %r (only "subscriber")', table)
        return False
    return True


class AuthDb(_Mod):
    """``KSR.auth_db``: credentials checked against the subscriber table."""

    def _auth(self, realm: str, table: str, header: str) -> int:
        if not _table_ok(table):
            return ERROR
        st = self._st
        return _Checker(current_auth_service(), st).check(expand_realm(st, realm), header, None)

    def auth_check(self, realm: str, table: str, flags: int = 0) -> int:
        """REGISTER: Authorization, others: Proxy-Authorization. ``flags`` 1: the user and domain of To
        (REGISTER) or From must be the credentials' user and realm (-8 otherwise); 2: for REGISTER, From too."""
        if not _table_ok(table):
            return ERROR
        st = self._st
        r = expand_realm(st, realm)
        checker = _Checker(current_auth_service(), st)
        rc = checker.check(r, _cred_header(st), None)
        f = int(flags or 0)
        if rc == OK and f & 3 and checker.creds and not _identity_matches(st, checker.creds, r, bool(f & 2)):
            return checker.fail(USER_MISMATCH, checker.creds)
        return rc

    def www_authenticate(self, realm: str, table: str, method: str | None = None) -> int:
        return self._auth(realm, table, "Authorization")

    def proxy_authenticate(self, realm: str, table: str) -> int:
        return self._auth(realm, table, "Proxy-Authorization")


class Auth(_Mod):
    """``KSR.auth``: credentials helpers (challenges are effects, see ``AUTH_EFFECT_SHIMS``)."""

    def has_credentials(self, realm: str) -> int:
        st = self._st
        r = expand_realm(st, realm)
        return 1 if any(find_credentials(st.req, h, r) for h in _CRED_HEADERS) else -1

    def consume_credentials(self) -> int:
        """Remove the credentials for our realms (domains with subscribers, and the request's From/To
        domain) before forwarding; 1 when some were removed."""
        st = self._st
        msg = st.req
        ours = set(current_auth_service().snapshot.domains)
        for pv in ("$fd", "$td"):
            v = get_pv(st, pv)
            if v:
                ours.add(str(v).lower())
        removed = 0
        for header in _CRED_HEADERS:
            values = msg.get_all(header)
            keep = [v for v in values if not _realm_in(v, ours)]
            if len(keep) != len(values):
                removed += len(values) - len(keep)
                msg.remove(header)
                for v in keep:
                    msg.append(header, v)
        return 1 if removed else -1

    def pv_auth_check(self, realm: str, passwd: str, flags: int = 0, checkfrom: int = 0) -> int:
        """Check against ``passwd`` (``flags`` 1: it is already the HA1 of the credentials' algorithm);
        ``checkfrom`` 1: the From (To for REGISTER) user must be the credentials' user."""
        st = self._st
        r = expand_realm(st, realm)
        secret = str(passwd or "")

        def ha1_of(creds: Credentials) -> str:
            return (
                secret if int(flags or 0) & 1 else ha1(creds.algorithm, creds.username, creds.realm, secret)
            )

        checker = _Checker(current_auth_service(), st)
        rc = checker.check(r, _cred_header(st), ha1_of)
        if (
            rc == OK
            and int(checkfrom or 0)
            and checker.creds
            and not _identity_matches(st, checker.creds, r, False)
        ):
            return checker.fail(USER_MISMATCH, checker.creds)
        return rc


def _realm_in(value: str, realms: set[str]) -> bool:
    creds = parse_credentials(value)
    return creds is not None and creds.realm.lower() in realms


# -- challenges (effects) -----------------------------------------------------------------------------------

AUTH_EFFECT_SHIMS: dict[str, dict[str, str]] = {
    "auth": {
        "auth_challenge": "auth_challenge",
        "www_challenge": "www_challenge",
        "proxy_challenge": "proxy_challenge",
    },
}


def challenge_headers(
    service: AuthService, state: RequestState, realm: str, code: int
) -> list[tuple[str, str]]:
    """One challenge per algorithm of the service (SHA-256 first by default), sharing a fresh nonce; ``stale=true`` when the request's
    credentials for ``realm`` carry a nonce of ours that has expired."""
    name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
    creds = None
    for header in _CRED_HEADERS:
        creds = creds or find_credentials(state.req, header, realm)
    stale = False
    if creds is not None:
        found = service.nonces.check(creds.nonce, realm)
        minted = service.nonces.timestamp(creds.nonce)
        stale = found is NonceState.STALE or (
            found is NonceState.VALID and minted is not None and minted <= service.counts.horizon
        )
    nonce = service.nonces.mint(realm)
    return [(name, build_challenge(realm, nonce, alg, stale=stale)) for alg in service.algorithms]


async def _send_challenge(state: RequestState, services: RouteServices, realm: Any, code: int) -> int:
    if not state.is_request or state.method in ("ACK", "CANCEL"):
        return ERROR  # RFC 3261 22.1: ACK and CANCEL are never challenged
    r = expand_realm(state, str(realm or ""))
    if not r:
        raise ValueError("auth challenge: empty realm")
    headers = challenge_headers(current_auth_service(), state, r, code)
    reason = "Unauthorized" if code == 401 else "Proxy Authentication Required"
    rc = await services.send_reply(state, code, reason, [*state.reply_headers, *headers])
    if rc > 0:
        state.replied = (code, reason)
    return rc


async def _auth_challenge(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    code = 401 if state.method == "REGISTER" else 407
    return await _send_challenge(state, services, args[0] if args else "", code)


async def _www_challenge(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    return await _send_challenge(state, services, args[0] if args else "", 401)


async def _proxy_challenge(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    return await _send_challenge(state, services, args[0] if args else "", 407)


AUTH_HANDLERS: dict[str, Callable[[RequestState, RouteServices, tuple[Any, ...]], Awaitable[Any]]] = {
    "auth_challenge": _auth_challenge,
    "www_challenge": _www_challenge,
    "proxy_challenge": _proxy_challenge,
}
