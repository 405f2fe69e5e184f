"""Kamailio-style pseudo-variables (``$ru``, ``$hdr(Name)``, ``$var(x)``...) over a ``RequestState``.

``get_pv`` returns None for a variable that has no value (``$null``); ``set_pv`` raises ``ValueError`` for
read-only ones. ``$avp(x)`` assignment pushes a new value (the newest is read first); ``$xavp(r=>k)``
assignment starts a new item of root ``r`` and ``$xavp(r[0]=>k)`` sets a field of the newest item.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from trioproxy.sip import Response, parse_uri_untrusted

from .state import RequestState

__all__ = ["PV_NAMES", "SIMPLE_PVS", "get_pv", "set_pv", "unset_pv"]

Value = str | int
_PV_RE = re.compile(r"^\$(\w+)(?:\((.*)\))?$", re.S)
_XAVP_RE = re.compile(r"^(\w+)(?:\[(\d+)\])?(?:=>(\w+))?$")


def _uri_part(state: RequestState, part: str) -> Value | None:
    u = state.ruri
    if part == "user":
        return u.user
    if part == "host":
        return u.host
    if part == "port":
        return u.port
    return u.scheme


def _addr_part(state: RequestState, which: str, part: str) -> Value | None:
    na = state.msg.from_ if which == "f" else state.msg.to
    if part == "uri":
        return str(na.uri)
    if part == "user":
        return na.uri.user
    if part == "host":
        return na.uri.host
    if part == "tag":
        return na.tag
    return na.display


def _src(state: RequestState, part: str) -> Value | None:
    s = state.msg.source
    if s is None:
        return None
    return s.host if part == "host" else (s.port if part == "port" else s.transport)


def _local(state: RequestState, part: str) -> Value | None:
    s = state.local
    if s is None:
        return None
    return s.host if part == "host" else s.port


def _status(state: RequestState) -> Value | None:
    return state.msg.status if isinstance(state.msg, Response) else None


def _reason(state: RequestState) -> Value | None:
    return state.msg.reason if isinstance(state.msg, Response) else None


def _branch_idx(state: RequestState) -> Value:
    # Kamailio's tmx: the branch's index in branch and reply routes, else the number of branches added.
    return state.branch_index if state.route in ("branch", "reply") else len(state.branches)


def _reply_code(state: RequestState) -> Value | None:
    if isinstance(state.msg, Response):
        return state.msg.status
    return state.response.status if state.response is not None else None


_SIMPLE: dict[str, Callable[[RequestState], Value | None]] = {
    "ru": lambda s: str(s.ruri),
    "ou": lambda s: str(s.ruri),
    "rU": lambda s: _uri_part(s, "user"),
    "rd": lambda s: _uri_part(s, "host"),
    "rp": lambda s: _uri_part(s, "port") or (5061 if s.ruri.scheme == "sips" else 5060),
    "rz": lambda s: _uri_part(s, "scheme"),
    "du": lambda s: s.dst_uri,
    "fu": lambda s: _addr_part(s, "f", "uri"),
    "fU": lambda s: _addr_part(s, "f", "user"),
    "fd": lambda s: _addr_part(s, "f", "host"),
    "ft": lambda s: _addr_part(s, "f", "tag"),
    "fn": lambda s: _addr_part(s, "f", "display"),
    "tu": lambda s: _addr_part(s, "t", "uri"),
    "tU": lambda s: _addr_part(s, "t", "user"),
    "td": lambda s: _addr_part(s, "t", "host"),
    "tt": lambda s: _addr_part(s, "t", "tag"),
    "tn": lambda s: _addr_part(s, "t", "display"),
    "ci": lambda s: s.msg.call_id,
    "cs": lambda s: s.msg.cseq.seq,
    "rm": lambda s: s.method,
    "rs": _status,
    "rr": _reason,
    "si": lambda s: _src(s, "host"),
    "sp": lambda s: _src(s, "port"),
    "pr": lambda s: _src(s, "proto"),
    "proto": lambda s: _src(s, "proto"),
    "Ri": lambda s: _local(s, "host"),
    "Rp": lambda s: _local(s, "port"),
    "ua": lambda s: s.msg.get("User-Agent"),
    "ct": lambda s: s.msg.get("Contact"),
    "cl": lambda s: len(s.msg.body),
    "mf": lambda s: s.flags,
    "bf": lambda s: s.bflags,
    "br": lambda s: s.branches[0].uri if s.branches else None,
    "rb": lambda s: s.msg.body.decode("utf-8", "replace"),
    "mb": lambda s: s.msg.to_bytes().decode("utf-8", "replace"),
    "ml": lambda s: len(s.msg.to_bytes()),
    "T_reply_code": _reply_code,
    "T_branch_idx": _branch_idx,
}

SIMPLE_PVS = _SIMPLE
PV_NAMES = frozenset(_SIMPLE) | {"hdr", "var", "avp", "xavp"}


def _xavp_get(state: RequestState, spec: str) -> Value | None:
    m = _XAVP_RE.match(spec)
    if m is None:
        raise ValueError(f"bad $xavp name {spec!r}")
    root, idx, key = m.group(1), int(m.group(2) or 0), m.group(3)
    items = state.xavps.get(root, [])
    if idx >= len(items):
        return None
    item = items[idx]
    if key is None:
        return None
    vals = item.get(key)
    return vals[0] if vals else None


def _xavp_set(state: RequestState, spec: str, value: Value) -> None:
    m = _XAVP_RE.match(spec)
    if m is None or m.group(3) is None:
        raise ValueError(f"bad $xavp name {spec!r}")
    root, idx, key = m.group(1), m.group(2), m.group(3)
    items = state.xavps.setdefault(root, [])
    if idx is None or not items:
        items.insert(0, {key: [value]})
    else:
        i = int(idx)
        if i >= len(items):
            raise ValueError(f"no $xavp item {spec!r}")
        items[i][key] = [value]


# Scripts use a handful of names over and over; keep their parsed form (bounded).
_PARSED: dict[str, tuple[str, str | None]] = {}
_PARSED_MAX = 1024


def _parse(name: str) -> tuple[str, str | None]:
    hit = _PARSED.get(name)
    if hit is not None:
        return hit
    m = _PV_RE.match(name.strip())
    if m is None:
        raise ValueError(f"bad pseudo-variable {name!r}")
    out = (m.group(1), m.group(2))
    if len(_PARSED) < _PARSED_MAX:
        _PARSED[name] = out
    return out


def get_pv(state: RequestState, name: str) -> Value | None:
    """The value of pseudo-variable ``name`` (``"$ru"``, ``"$hdr(From)"``...), None when it has none."""
    kind, arg = _parse(name)
    if arg is None:
        fn = _SIMPLE.get(kind)
        if fn is None:
            raise ValueError(f"unknown pseudo-variable {name!r}")
        return fn(state)
    if kind == "hdr":
        return state.msg.get(arg)
    if kind == "var":
        return state.vars.get(arg)
    if kind == "avp":
        vals = state.avps.get(arg)
        return vals[0] if vals else None
    if kind == "xavp":
        return _xavp_get(state, arg)
    raise ValueError(f"unknown pseudo-variable {name!r}")


def set_pv(state: RequestState, name: str, value: Value) -> None:
    """Assign a settable pseudo-variable."""
    kind, arg = _parse(name)
    if arg is not None:
        if kind == "var":
            state.vars[arg] = value
        elif kind == "avp":
            state.avps.setdefault(arg, []).insert(0, value)
        elif kind == "xavp":
            _xavp_set(state, arg, value)
        else:
            raise ValueError(f"pseudo-variable {name!r} is read-only")
        return
    text = str(value)
    if kind == "ru":
        state.set_ruri(text)
    elif kind in ("rU", "rd", "rp"):
        u = state.ruri.copy()
        if kind == "rU":
            u.user = text or None
        elif kind == "rd":
            u.host = text
        else:
            u.port = int(value) if text else None
        state.req.uri = parse_uri_untrusted(str(u))
    elif kind == "du":
        state.dst_uri = str(parse_uri_untrusted(text)) if text else None
    elif kind == "mf":
        state.flags = int(value)
    elif kind == "bf":
        state.bflags = int(value)
    else:
        raise ValueError(f"pseudo-variable {name!r} is read-only")


def unset_pv(state: RequestState, name: str) -> None:
    """Remove the value of ``$var``/``$avp``/``$xavp``/``$du``."""
    kind, arg = _parse(name)
    if kind == "var" and arg is not None:
        state.vars.pop(arg, None)
    elif kind == "avp" and arg is not None:
        state.avps.pop(arg, None)
    elif kind == "xavp" and arg is not None:
        state.xavps.pop(arg.split("[")[0].split("=>")[0], None)
    elif kind == "du" and arg is None:
        state.dst_uri = None
    else:
        raise ValueError(f"pseudo-variable {name!r} cannot be unset")
