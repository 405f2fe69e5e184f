"""``KSR.rtpengine``: media relayed through rtpengine, controlled over its ng protocol (Kamailio's module).

Every function talks to rtpengine, so each is an effect: the Lua coroutine waits for the answer, the proxy
does not. The module is *optional*: a script sees ``KSR.rtpengine`` only when the proxy runs with
``--rtpengine`` (``[rtpengine] instances``), so ``if KSR.rtpengine then`` guards tell the truth, and
``trioproxy check`` warns about a script that uses it without it.

- ``rtpengine_offer(flags)`` / ``rtpengine_answer(flags)``: send the SDP of the message the route works on
  (the request, or the reply in a reply route) and put rtpengine's SDP in its place.
- ``rtpengine_delete(flags)``: end the session; ``rtpengine_query(flags)``: 1 when rtpengine knows it;
  ``rtpengine_query_v(fmt, var)`` also stores the answer as JSON (``fmt`` "j") in ``$var(..)``/``$avp(..)``.
- ``rtpengine_manage(flags)`` chooses as Kamailio does: an INVITE or UPDATE with SDP is an offer, an ACK
  with SDP an answer, a BYE or CANCEL a delete; a reply with SDP answers the request's SDP offer (or is
  the offer when the request had none); a failed final reply to an INVITE, and a failure route, delete.

The ng ``call-id`` is the SIP Call-ID, ``from-tag`` and ``to-tag`` the From and To tags (flags
``call-id=``, ``from-tag=``, ``to-tag=`` override them). Return codes: 1 done, -1 nothing to do, an error
answer from rtpengine, or no instance answering (the call itself goes on).

The running proxy makes its client current for its tasks (a context variable, as the flood service).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from trioproxy.rtpengine import NgError, NoInstance, RtpengineClient, has_sdp, parse_flags
from trioproxy.sip import Request

from .pv import set_pv
from .services import RouteServices
from .state import RequestState

__all__ = [
    "RTPENGINE_HANDLERS",
    "RTPENGINE_SHIMS",
    "current_rtpengine",
    "set_rtpengine",
    "use_rtpengine",
]

log = logging.getLogger("trioproxy.rtpengine")

_FUNCTIONS = ("manage", "offer", "answer", "delete", "query", "query_v")
RTPENGINE_SHIMS: dict[str, str] = {f"rtpengine_{f}": f"rtpengine_{f}" for f in _FUNCTIONS}

_CURRENT: ContextVar[RtpengineClient | None] = ContextVar("trioproxy_rtpengine", default=None)


def current_rtpengine() -> RtpengineClient | None:
    """The client of the running proxy (None without ``--rtpengine``)."""
    return _CURRENT.get()


def set_rtpengine(client: RtpengineClient | None) -> None:
    """Make ``client`` current for this task and the tasks it starts from now on."""
    _CURRENT.set(client)


@contextmanager
def use_rtpengine(client: RtpengineClient) -> Iterator[RtpengineClient]:
    """Make ``client`` current within the block (route tests)."""
    token = _CURRENT.set(client)
    try:
        yield client
    finally:
        _CURRENT.reset(token)


def _ids(state: RequestState, flags: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ng keys of ``flags`` and the call identifiers of the message (overridable by flags)."""
    parsed = parse_flags(flags)
    msg = state.msg
    ids: dict[str, Any] = {
        "call-id": parsed.call_id or msg.call_id,
        "from-tag": parsed.from_tag or msg.from_.tag,
    }
    to_tag = parsed.to_tag or msg.to.tag
    if to_tag:
        ids["to-tag"] = to_tag
    if not ids["from-tag"]:
        del ids["from-tag"]
    return parsed.ng, ids


async def _send(command: str, params: dict[str, Any]) -> dict[str, Any] | None:
    client = current_rtpengine()
    if client is None:
        raise RuntimeError("rtpengine: no instance configured (--rtpengine)")
    try:
        reply = await client.command(command, params)
    except NoInstance as exc:
        log.error("rtpengine %s for %s: %s", command, params.get("call-id"), exc)
        return None
    if reply.get("result") not in ("ok", "pong"):
        log.warning(
            "rtpengine %s for %s: %s %s",
            command, params.get("call-id"), reply.get("result"), reply.get("error-reason", ""),
        )  # fmt: skip
        return None
    return reply


async def _media(state: RequestState, command: str, flags: str) -> int:
    msg = state.msg
    if not has_sdp(msg):
        return -1
    ng, ids = _ids(state, flags)
    if command == "answer" and "to-tag" not in ids:
        log.warning("rtpengine answer for %s: no To tag", ids["call-id"])
        return -1
    params = {**ng, **ids, "sdp": msg.body}
    src = msg.source
    if src is not None and "received-from" not in params:
        params["received-from"] = ["IP6" if ":" in src.host else "IP4", src.host]
    reply = await _send(command, params)
    sdp = None if reply is None else reply.get("sdp")
    if not isinstance(sdp, str):
        return -1
    msg.set_body(sdp.encode("utf-8", "surrogateescape"))
    return 1


async def _delete(state: RequestState, flags: str) -> int:
    ng, ids = _ids(state, flags)
    return 1 if await _send("delete", {**ng, **ids}) is not None else -1


def _manage_action(state: RequestState) -> str | None:
    if state.route == "failure":
        return "delete"
    msg = state.msg
    if isinstance(msg, Request):
        method = msg.method
        if method in ("BYE", "CANCEL"):
            return "delete"
        if not has_sdp(msg):
            return None
        if method in ("INVITE", "UPDATE"):
            return "offer"
        return "answer" if method == "ACK" else None
    method = msg.cseq.method
    if method not in ("INVITE", "UPDATE"):
        return None
    if msg.status >= 300:
        return "delete" if method == "INVITE" else None
    if not has_sdp(msg):
        return None
    request = state.request
    return "answer" if request is not None and has_sdp(request) else "offer"


def _flags(args: tuple[Any, ...]) -> str:
    return str(args[0]) if args and args[0] is not None else ""


async def _trying(state: RequestState, services: RouteServices) -> None:
    if state.route == "request" and state.is_request:
        await services.trying(state)


async def rtpengine_manage(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    action = _manage_action(state)
    if action is None:
        return -1
    await _trying(state, services)
    if action == "delete":
        return await _delete(state, _flags(args))
    return await _media(state, action, _flags(args))


async def rtpengine_offer(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    await _trying(state, services)
    return await _media(state, "offer", _flags(args))


async def rtpengine_answer(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    await _trying(state, services)
    return await _media(state, "answer", _flags(args))


async def rtpengine_delete(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    await _trying(state, services)
    return await _delete(state, _flags(args))


async def _query(state: RequestState, flags: str) -> dict[str, Any] | None:
    ng, ids = _ids(state, flags)
    return await _send("query", {**ng, **ids})


async def rtpengine_query(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    await _trying(state, services)
    return 1 if await _query(state, _flags(args)) is not None else -1


async def rtpengine_query_v(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    fmt = str(args[0]) if args else ""
    target = str(args[1]) if len(args) > 1 else ""
    if fmt != "j" or not target.startswith(("$var(", "$avp(")):
        raise NgError('rtpengine_query_v: expected ("j", "$var(name)") or ("j", "$avp(name)")')
    await _trying(state, services)
    reply = await _query(state, "")
    if reply is None:
        return -1
    set_pv(state, target, json.dumps(reply, sort_keys=True))
    return 1


RTPENGINE_HANDLERS = {
    "rtpengine_manage": rtpengine_manage,
    "rtpengine_offer": rtpengine_offer,
    "rtpengine_answer": rtpengine_answer,
    "rtpengine_delete": rtpengine_delete,
    "rtpengine_query": rtpengine_query,
    "rtpengine_query_v": rtpengine_query_v,
}
