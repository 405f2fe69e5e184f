"""KSR calls that need the proxy or I/O: Lua shims yield an effect, the bridge awaits a handler here.

``EFFECT_SHIMS`` says which KSR functions are shims (module -> function -> effect name; module ``""`` is
``KSR`` itself). ``HANDLERS`` maps an effect name to the coroutine the bridge awaits with the route's state
and services; its return value is what the Lua call returns. ``exit`` and ``drop`` end the route and are
handled by the bridge itself.

An INVITE's automatic 100 Trying waits for the script (``force_rport`` decides where it goes): the effects
that create the transaction or may wait (``t_newtran``, ``t_relay``, lookups, ``sleep``...) send it first
through ``RouteServices.trying``; replies do not (a final reply needs no 100 before it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from trioproxy.sip import Address, parse_uri_untrusted, reason_phrase

from .ksr_modules import apply_contacts, sanity_problem
from .services import RouteServices
from .state import RequestState

__all__ = ["EFFECT_SHIMS", "END_EFFECTS", "HANDLERS"]

EFFECT_SHIMS: dict[str, dict[str, str]] = {
    "": {"drop": "drop"},
    "x": {"exit": "exit", "drop": "drop", "sleep": "sleep", "resolve": "resolve"},
    "sl": {"sl_send_reply": "sl_reply", "send_reply": "sl_reply", "sl_reply_error": "sl_reply_error"},
    "tm": {
        "t_relay": "relay",
        "t_relay_to_proto_addr": "relay_to",
        "t_reply": "t_reply",
        "t_check_trans": "check_trans",
        "t_newtran": "newtran",
    },
    "registrar": {"save": "save", "lookup": "lookup", "registered": "registered", "unregister": "unregister"},
    "sanity": {"sanity_check": "sanity"},
}

END_EFFECTS = frozenset({"exit", "drop"})

Handler = Callable[[RequestState, RouteServices, tuple[Any, ...]], Awaitable[Any]]


async def _reply(state: RequestState, services: RouteServices, status: Any, reason: Any) -> int:
    code = int(status)
    if not 100 <= code <= 699:
        raise ValueError(f"bad reply status {status!r}")
    if not state.is_request or state.method == "ACK":
        # RFC 3261 17.2.1 / 8.2: an ACK is never answered.
        return -1
    text = str(reason) if reason else reason_phrase(code)
    rc = await services.send_reply(state, code, text, list(state.reply_headers))
    if rc > 0 and code >= 200:
        state.replied = (code, text)
    return rc


async def _sl_reply(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    return await _reply(state, services, args[0] if args else 500, args[1] if len(args) > 1 else None)


async def _sl_reply_error(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    # Kamailio answers with the reason of the last internal error: a relay refused because the caller
    # cancelled is a 487 (the final the caller expects after its CANCEL), anything else a 500.
    code, reason = state.last_error or (500, "Server Internal Error")
    return await _reply(state, services, code, reason)


async def _relay(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    state.req  # noqa: B018  (only requests are relayed)
    await services.trying(state)
    rc = await services.relay(state)
    if rc > 0:
        state.relayed += 1
    elif rc == -2 or state.canceled:  # refused: the transaction was cancelled (or ended by a 6xx)
        state.last_error = (487, "Request Terminated")
    else:
        state.last_error = (500, "Server Internal Error")
    return rc


async def _relay_to(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    proto, host, port = str(args[0]).lower(), str(args[1]), int(args[2])
    state.forced_dest = Address(proto, host.strip("[]"), port)
    return await _relay(state, services, ())


async def _check_trans(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    await services.trying(state)
    return await services.check_trans(state)


async def _newtran(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    # The transaction layer made the server transaction when the request arrived (retransmissions are
    # absorbed, replies are stateful); what t_newtran adds on the wire is the INVITE's 100 Trying, now.
    if not state.is_request or state.method == "ACK":
        return -1
    await services.trying(state)
    return 1


def _aor(state: RequestState, uri: Any) -> str:
    u = parse_uri_untrusted(str(uri)) if uri else state.ruri
    return f"{u.user}@{u.host.lower()}" if u.user else u.host.lower()


async def _lookup(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    table = str(args[0])
    await services.trying(state)
    contacts = await services.lookup(table, _aor(state, args[1] if len(args) > 1 else None))
    return apply_contacts(state, contacts)


async def _registered(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    table = str(args[0])
    await services.trying(state)
    contacts = await services.lookup(table, _aor(state, args[1] if len(args) > 1 else None))
    return 1 if contacts else -1


async def _save(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    flags = int(args[1]) if len(args) > 1 and args[1] is not None else 0
    return await services.save(str(args[0]), state, flags)


async def _unregister(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    ruid = str(args[2]) if len(args) > 2 and args[2] is not None else ""
    await services.trying(state)
    return await services.unregister(str(args[0]), _aor(state, args[1]), ruid)


async def _sleep(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    seconds = float(args[0])
    if seconds < 0:
        raise ValueError("sleep: negative time")
    await services.trying(state)
    await services.sleep(seconds)
    return 1


async def _resolve(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> list[str]:
    await services.trying(state)
    return list(await services.resolve(str(args[0])))


async def _sanity(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    problem = sanity_problem(state)
    if problem is None:
        return 1
    status, reason, headers = problem
    if state.method != "ACK":
        rc = await services.send_reply(state, status, reason, [*state.reply_headers, *headers])
        if rc > 0:
            state.replied = (status, reason)
    return -1


HANDLERS: dict[str, Handler] = {
    "sl_reply": _sl_reply,
    "t_reply": _sl_reply,
    "sl_reply_error": _sl_reply_error,
    "relay": _relay,
    "relay_to": _relay_to,
    "check_trans": _check_trans,
    "newtran": _newtran,
    "lookup": _lookup,
    "registered": _registered,
    "save": _save,
    "unregister": _unregister,
    "sleep": _sleep,
    "resolve": _resolve,
    "sanity": _sanity,
}
