"""``KSR.uac``: Kamailio's uac module for trunks.

- ``uac_auth()`` (failure route): the best reply is a 401/407 from a trunk; adds the ``Authorization`` /
  ``Proxy-Authorization`` answering its digest challenge with the credentials of the ``[[uac.registrations]]``
  entry whose realm is the challenge's (or, for entries without a realm, whose ``r_domain`` is; else whose
  ``r_domain`` is the Request-URI host). The script then relays again (``t_relay()``). 1 done, -1 no
  challenge or no credentials. The CSeq is kept (the caller's transaction goes on); registrars and trunks
  accept that, as with Kamailio without ``uac_auth_mode`` flags.
- ``uac_replace_from(display, uri)`` / ``uac_replace_to(display, uri)``: rewrite the display name and URI
  of From / To, keeping their tags and parameters ("" display: none). 1, or -1 on a bad URI.
- ``uac_reg_lookup(uuid, dst)``: the ``l_uuid`` of a registration (pseudo-variables allowed: ``"$rU"``) to
  its local user: ``dst`` (a pseudo-variable such as ``"$ru"``) gets ``sip:l_username@l_domain``. 1 found,
  -1 not.
- ``uac_reg_status(uuid)``: 1 registered now, -1 not (yet), -2 its last attempt failed, -99 no such entry.
"""

from __future__ import annotations

import time

import trio

from trioproxy.sip import NameAddr, Request, SIPError, parse_uri_untrusted
from trioproxy.uac.client import current_uac
from trioproxy.uac.digest_client import answer_challenge, parse_challenge

from .ksr_core import _Mod
from .pv import get_pv, set_pv

__all__ = ["Uac"]


def _quote(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Uac(_Mod):
    """``KSR.uac``."""

    def _value(self, text: object) -> str:
        s = str(text)
        if s.startswith("$"):
            got = get_pv(self._st, s)
            return "" if got is None else str(got)
        return s

    def uac_auth(self) -> int:
        st = self._st
        registry = current_uac()
        reply = st.response
        msg = st.msg
        if (
            registry is None
            or reply is None
            or not isinstance(msg, Request)
            or reply.status not in (401, 407)
        ):
            return -1
        header = "WWW-Authenticate" if reply.status == 401 else "Proxy-Authenticate"
        for value in reply.get_all(header):
            challenge = parse_challenge(value)
            if challenge is None:
                continue
            trunk = registry.credentials_for(challenge.realm, msg.uri.host)
            if trunk is None:
                continue
            answer = answer_challenge(
                challenge, trunk.auth_user, trunk.auth_password, msg.method, str(msg.uri)
            )
            if answer is None:
                continue
            name = "Authorization" if reply.status == 401 else "Proxy-Authorization"
            msg.remove(name)
            msg.append(name, answer)
            return 1
        return -1

    def _replace(self, header: str, display: str, uri: str) -> int:
        st = self._st
        msg = st.req
        try:
            new_uri = parse_uri_untrusted(self._value(uri))
            current = NameAddr.parse_untrusted(msg.get(header) or "")
        except SIPError:
            return -1
        shown = self._value(display)
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in current.params.items())
        prefix = f"{_quote(shown)} " if shown else ""
        msg.set(header, f"{prefix}<{new_uri}>{params}")
        return 1

    def uac_replace_from(self, display: str, uri: str) -> int:
        return self._replace("From", display, uri)

    def uac_replace_to(self, display: str, uri: str) -> int:
        return self._replace("To", display, uri)

    def uac_reg_lookup(self, uuid: str, dst: str) -> int:
        registry = current_uac()
        trunk = None if registry is None else registry.lookup(self._value(uuid))
        if trunk is None:
            return -1
        set_pv(self._st, str(dst), f"sip:{trunk.l_username}@{trunk.l_domain}")
        return 1

    def uac_reg_status(self, uuid: str) -> int:
        registry = current_uac()
        if registry is None:
            return -99
        return registry.status(self._value(uuid), trio_now())


def trio_now() -> float:
    """The clock registrations run on (trio's, inside the proxy; monotonic outside it)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()
