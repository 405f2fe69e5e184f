"""KSR functions that only read or edit the current message: core, pv, kx, hdr, textops, siputils, maxfwd.

Each class's public methods become one Lua table of Python functions, built once when a script loads
(``KSR.hdr.append`` is ``Hdr(ctx).append``). They act on ``ctx.state``, which the bridge sets to the
running route's state before every resume. Return values follow Kamailio: predicates named ``is_*`` /
``isflagset`` return booleans, other functions return 1 (or a positive number) for success and a
negative number for failure.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from trioproxy.sip import Request, SIPError, Via, parse_uri_untrusted

from . import saferegex
from .pv import SIMPLE_PVS, get_pv, set_pv, unset_pv
from .state import RequestState

if TYPE_CHECKING:
    from .htable import HtableStore
    from .services import RouteServices

__all__ = [
    "Core", "Hdr", "KsrContext", "Kx", "Maxfwd", "Pv", "Siputils", "Textops", "split_header_text", "stamp_rport",
]  # fmt: skip

Value = str | int

# KSR.is_method_in letters.
_METHOD_LETTERS = {
    "I": "INVITE", "A": "ACK", "B": "BYE", "C": "CANCEL", "R": "REGISTER", "O": "OPTIONS", "S": "SUBSCRIBE",
    "N": "NOTIFY", "M": "MESSAGE", "U": "UPDATE", "K": "PRACK", "F": "INFO", "E": "REFER", "P": "PUBLISH",
}  # fmt: skip

_LOG_LEVELS = {
    "dbg": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
    "warn": logging.WARNING, "warning": logging.WARNING, "err": logging.ERROR, "error": logging.ERROR,
    "crit": logging.CRITICAL, "alert": logging.CRITICAL,
}  # fmt: skip


class KsrContext:
    """What the KSR functions of one script share: the running state, the services, the log."""

    def __init__(self, name: str, htables: HtableStore, logger: logging.Logger) -> None:
        self.name = name
        self.htables = htables
        self.log = logger
        self.state: RequestState | None = None
        self.services: RouteServices | None = None

    @property
    def st(self) -> RequestState:
        """The running route's state (an error in ``ksr_init``, which has no message)."""
        s = self.state
        if s is None:
            raise RuntimeError("this KSR function needs a SIP message (not available in ksr_init)")
        return s

    def is_myself(self, host: str, port: int | None) -> bool:
        """Whether host:port is the proxy itself (False without services)."""
        return self.services is not None and self.services.is_myself(host, port)

    def uri_is_myself(self, text: str) -> bool:
        """Whether the URI in ``text`` points at the proxy."""
        try:
            u = parse_uri_untrusted(text)
        except SIPError:
            return False
        return self.is_myself(u.host, u.port)


def split_header_text(text: str) -> list[tuple[str, str]]:
    """Split Kamailio-style header text (``"X-A: 1\\r\\nX-B: 2\\r\\n"``) into (name, value) pairs."""
    out: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", text):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t"):
            raise ValueError(f"bad header text {line!r}")
        out.append((name.strip(), value.strip()))
    return out


def stamp_rport(req: Request, host: str, port: int) -> None:
    """Put ``received=host;rport=port`` into the top Via of ``req`` (in that order, replacing old values)."""
    via = req.top_via
    params = {k: v for k, v in via.params.items() if k not in ("received", "rport")}
    params["received"] = host
    params["rport"] = str(port)
    req.pop_first("Via")
    req.insert_top("Via", str(Via(via.transport, via.host, via.port, params)))


def _b(flag: bool) -> int:
    return 1 if flag else -1


class _Mod:
    def __init__(self, ctx: KsrContext) -> None:
        self._ctx = ctx

    @property
    def _st(self) -> RequestState:
        return self._ctx.st


class Core(_Mod):
    """Top-level ``KSR.*`` functions."""

    def is_method(self, name: str) -> bool:
        return self._st.method in {m.strip().upper() for m in re.split(r"[|,]", name)}

    def is_method_in(self, letters: str) -> bool:
        m = self._st.method
        return any(_METHOD_LETTERS.get(c) == m for c in letters)

    def is_INVITE(self) -> bool:
        return self._st.method == "INVITE"

    def is_ACK(self) -> bool:
        return self._st.method == "ACK"

    def is_BYE(self) -> bool:
        return self._st.method == "BYE"

    def is_CANCEL(self) -> bool:
        return self._st.method == "CANCEL"

    def is_REGISTER(self) -> bool:
        return self._st.method == "REGISTER"

    def is_OPTIONS(self) -> bool:
        return self._st.method == "OPTIONS"

    def is_SUBSCRIBE(self) -> bool:
        return self._st.method == "SUBSCRIBE"

    def is_NOTIFY(self) -> bool:
        return self._st.method == "NOTIFY"

    def is_MESSAGE(self) -> bool:
        return self._st.method == "MESSAGE"

    def is_UPDATE(self) -> bool:
        return self._st.method == "UPDATE"

    def is_PRACK(self) -> bool:
        return self._st.method == "PRACK"

    def is_INFO(self) -> bool:
        return self._st.method == "INFO"

    def is_REFER(self) -> bool:
        return self._st.method == "REFER"

    def is_PUBLISH(self) -> bool:
        return self._st.method == "PUBLISH"

    # The transport the message arrived over (Kamailio's KSR.is_UDP ... is_WSX, is_proto("w")).
    def _proto(self) -> str:
        src = self._st.msg.source
        return src.transport.lower() if src is not None else ""

    def is_UDP(self) -> bool:
        return self._proto() == "udp"

    def is_TCP(self) -> bool:
        return self._proto() == "tcp"

    def is_TLS(self) -> bool:
        return self._proto() == "tls"

    def is_SCTP(self) -> bool:
        return self._proto() == "sctp"

    def is_WS(self) -> bool:
        return self._proto() == "ws"

    def is_WSS(self) -> bool:
        return self._proto() == "wss"

    def is_WSX(self) -> bool:
        return self._proto() in ("ws", "wss")

    def is_proto(self, letters: str) -> bool:
        """Letters: e any, u udp, t tcp, s tls, c sctp, w ws, W wss (Kamailio's ``is_proto``)."""
        proto = self._proto()
        names = {"u": "udp", "t": "tcp", "s": "tls", "c": "sctp", "w": "ws", "W": "wss"}
        return "e" in letters or any(names.get(c) == proto for c in letters)

    def _logmsg(self, level: int, msg: object) -> None:
        self._ctx.log.log(level, "[%s] %s", self._ctx.name, str(msg).rstrip("\n"))

    def log(self, level: str, msg: object) -> None:
        self._logmsg(_LOG_LEVELS.get(str(level).lower(), logging.INFO), msg)

    def dbg(self, msg: object) -> None:
        self._logmsg(logging.DEBUG, msg)

    def info(self, msg: object) -> None:
        self._logmsg(logging.INFO, msg)

    def notice(self, msg: object) -> None:
        self._logmsg(logging.INFO, msg)

    def warn(self, msg: object) -> None:
        self._logmsg(logging.WARNING, msg)

    def err(self, msg: object) -> None:
        self._logmsg(logging.ERROR, msg)

    def crit(self, msg: object) -> None:
        self._logmsg(logging.CRITICAL, msg)

    @staticmethod
    def _bit(flag: int) -> int:
        if not 0 <= int(flag) <= 31:
            raise ValueError(f"flag {flag} out of range 0..31")
        return 1 << int(flag)

    def setflag(self, flag: int) -> int:
        self._st.flags |= self._bit(flag)
        return 1

    def resetflag(self, flag: int) -> int:
        self._st.flags &= ~self._bit(flag)
        return 1

    def isflagset(self, flag: int) -> bool:
        return bool(self._st.flags & self._bit(flag))

    def _bflags(self, branch: int | None, bit: int, op: str) -> bool:
        st = self._st
        idx = int(branch or 0)
        if idx == 0:
            cur = st.bflags
        elif 0 < idx <= len(st.branches):
            cur = st.branches[idx - 1].bflags
        else:
            raise ValueError(f"no branch {idx}")
        new = cur | bit if op == "set" else (cur & ~bit if op == "reset" else cur)
        if idx == 0:
            st.bflags = new
        else:
            st.branches[idx - 1].bflags = new
        return bool(cur & bit)

    def setbflag(self, flag: int, branch: int | None = None) -> int:
        self._bflags(branch, self._bit(flag), "set")
        return 1

    def resetbflag(self, flag: int, branch: int | None = None) -> int:
        self._bflags(branch, self._bit(flag), "reset")
        return 1

    def isbflagset(self, flag: int, branch: int | None = None) -> bool:
        return self._bflags(branch, self._bit(flag), "get")

    def force_rport(self) -> int:
        """RFC 3581 4 as if the top Via had ``rport``: stamp ``received``/``rport=<source port>`` into it.

        Both the request the server transaction answers from (so every response, the 100 included, goes
        to the source address and port) and the copy that is forwarded (downstream sees the stamped Via).
        """
        st = self._st
        msg = st.msg
        if not isinstance(msg, Request):
            return 1
        src = msg.source
        if src is None:
            return -1
        stamp_rport(msg, src.host, src.port)
        if st.original is not None and st.original is not msg:
            stamp_rport(st.original, src.host, src.port)
        return 1

    def set_reply_no_connect(self) -> int:
        """Responses to this request (local and relayed) go only over a connection that is open (TCP, TLS):
        when the request's connection has closed, the response is dropped instead of opening a new one."""
        self._st.reply_no_connect = True
        return 1

    def is_myself(self, uri: str) -> bool:
        return self._ctx.uri_is_myself(uri)

    def is_myself_ruri(self) -> bool:
        u = self._st.ruri
        return self._ctx.is_myself(u.host, u.port)

    def is_myself_furi(self) -> bool:
        u = self._st.msg.from_.uri
        return self._ctx.is_myself(u.host, u.port)

    def is_myself_turi(self) -> bool:
        u = self._st.msg.to.uri
        return self._ctx.is_myself(u.host, u.port)

    def is_myself_srcip(self) -> bool:
        src = self._st.msg.source
        return src is not None and self._ctx.is_myself(src.host, None)

    def isdsturiset(self) -> bool:
        return self._st.dst_uri is not None

    def setdsturi(self, uri: str) -> int:
        set_pv(self._st, "$du", uri)
        return 1

    def resetdsturi(self) -> int:
        self._st.dst_uri = None
        return 1

    def seturi(self, uri: str) -> int:
        self._st.set_ruri(uri)
        return 1

    def rewriteuri(self, uri: str) -> int:
        return self.seturi(uri)

    def setuser(self, user: str) -> int:
        set_pv(self._st, "$rU", user)
        return 1

    def sethost(self, host: str) -> int:
        set_pv(self._st, "$rd", host)
        return 1


class Pv(_Mod):
    """``KSR.pv``: pseudo-variables by name."""

    def get(self, name: str) -> Value | None:
        return get_pv(self._st, name)

    def gete(self, name: str) -> Value:
        v = get_pv(self._st, name)
        return "" if v is None else v

    def getvn(self, name: str, default: int) -> Value:
        v = get_pv(self._st, name)
        return default if v is None else v

    def getvs(self, name: str, default: str) -> Value:
        v = get_pv(self._st, name)
        return default if v is None else v

    def sets(self, name: str, value: str) -> int:
        set_pv(self._st, name, str(value))
        return 1

    def seti(self, name: str, value: int) -> int:
        set_pv(self._st, name, int(value))
        return 1

    def unset(self, name: str) -> int:
        unset_pv(self._st, name)
        return 1

    def is_null(self, name: str) -> bool:
        return get_pv(self._st, name) is None


# KSR.kx getter -> pseudo-variable; gete_* return "" instead of nil.
_KX = {
    "ruri": "$ru", "ruser": "$rU", "rhost": "$rd", "rport": "$rp", "method": "$rm", "srcip": "$si",
    "srcport": "$sp", "rcvip": "$Ri", "rcvport": "$Rp", "proto": "$pr", "furi": "$fu", "fuser": "$fU",
    "fhost": "$fd", "ftag": "$ft", "turi": "$tu", "tuser": "$tU", "thost": "$td", "ttag": "$tt",
    "ua": "$ua", "callid": "$ci", "status": "$rs", "reason": "$rr", "duri": "$du", "body": "$rb",
    "msglen": "$ml", "cseq": "$cs",
}  # fmt: skip


class Kx:
    """``KSR.kx``: getters (built from ``_KX``: ``get_ruri``, ``gete_ua``...)."""

    def __init__(self, ctx: KsrContext) -> None:
        self._ctx = ctx

    def functions(self) -> dict[str, object]:
        """The getter functions by name."""
        out: dict[str, object] = {}
        for short, pv in _KX.items():
            out[f"get_{short}"] = self._getter(pv, None)
            out[f"gete_{short}"] = self._getter(pv, "")
        return out

    def _getter(self, pv: str, empty: Value | None) -> object:
        ctx = self._ctx
        fn = SIMPLE_PVS[pv[1:]]

        def get() -> Value | None:
            v = fn(ctx.st)
            return empty if v is None else v

        return get


class Hdr(_Mod):
    """``KSR.hdr``: header edits on the current message."""

    def append(self, text: str) -> int:
        for name, value in split_header_text(text):
            self._st.msg.append(name, value)
        return 1

    def insert(self, text: str) -> int:
        for name, value in reversed(split_header_text(text)):
            self._st.msg.insert_top(name, value)
        return 1

    def append_to_reply(self, text: str) -> int:
        self._st.reply_headers.extend(split_header_text(text))
        return 1

    def remove(self, name: str) -> int:
        n = self._st.msg.remove(name)
        return n if n > 0 else -1

    def rmappend(self, name: str, text: str) -> int:
        self._st.msg.remove(name)
        return self.append(text)

    def is_present(self, name: str) -> int:
        return _b(self._st.msg.has(name))

    def get(self, name: str) -> str | None:
        return self._st.msg.get(name)

    def get_idx(self, name: str, idx: int) -> str | None:
        vals = self._st.msg.get_all(name)
        i = int(idx)
        return vals[i] if -len(vals) <= i < len(vals) else None


class Textops(_Mod):
    """``KSR.textops``."""

    def remove_hf(self, name: str) -> int:
        n = self._st.msg.remove(name)
        return n if n > 0 else -1

    def is_present_hf(self, name: str) -> int:
        return _b(self._st.msg.has(name))

    def append_hf(self, text: str) -> int:
        return Hdr(self._ctx).append(text)

    def search(self, regex: str) -> int:
        text = self._st.msg.to_bytes().decode("utf-8", "replace")
        return _b(saferegex.search(regex, text))


class Siputils(_Mod):
    """``KSR.siputils``."""

    def has_totag(self) -> int:
        return _b(self._st.msg.to.tag is not None)

    def is_request(self) -> int:
        return _b(self._st.is_request)

    def is_reply(self) -> int:
        return _b(not self._st.is_request)

    def is_first_hop(self) -> int:
        # Only the UAC's own Via: the request has not passed another proxy yet.
        return _b(self._st.is_request and len(self._st.msg.vias) == 1)


_MAXFWD_MAX_LIMIT = 70  # Kamailio's maxfwd modparam max_limit (default)


class Maxfwd(_Mod):
    """``KSR.maxfwd``."""

    def process_maxfwd(self, limit: int) -> int:
        """RFC 3261 16.6 step 3: decrement; add ``limit`` when absent (2); -1 at 0.

        As Kamailio's maxfwd: ``limit`` is only the value added when the header is absent; a present value
        is decremented and capped at the module's ``max_limit`` (70), not at ``limit``.
        """
        st = self._st
        try:
            mf = st.msg.max_forwards
        except SIPError:
            return -2
        st.maxfwd_processed = True
        if mf is None:
            st.msg.set("Max-Forwards", str(int(limit)))
            return 2
        if mf == 0:
            return -1
        st.msg.set("Max-Forwards", str(min(mf, _MAXFWD_MAX_LIMIT + 1) - 1))
        return 1
