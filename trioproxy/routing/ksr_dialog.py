"""``KSR.dialog``: dialog tracking and profiles for scripts (Kamailio's dialog module, KEMI names).

- ``dlg_manage()`` in the request route of an initial INVITE tracks its dialog (1; -1 for anything else,
  or when the table is full). States: unconfirmed, early (a provisional with a To tag), confirmed (the first
  2xx), terminated (a BYE either way, a final non-2xx (also after a CANCEL), the lifetime, ``dlg_bye``).
  In-dialog requests are matched by Call-ID and both tags, not by a Record-Route parameter.
- ``set_dlg_profile(profile[, value])`` / ``set_dlg_profile_static(profile)`` add the current dialog to a
  profile declared in ``[dialog] profiles_with_value`` / ``profiles_no_value`` (1; -1: no managed dialog,
  undeclared profile, or a profile with values given none); ``unset_dlg_profile`` removes it.
- ``get_profile_size(profile, value, "$var(n)")`` stores the number of active dialogs in the profile (with
  that value; all values when it is "") in the pseudo-variable and returns 1; an undeclared profile -1.
- ``is_in_profile(profile[, value])`` (and ``is_in_profile_static``): 1 when the current dialog is in it.
- ``is_known_dlg()``: 1 when the message belongs to a tracked dialog.
- ``dlg_set_timeout(seconds)``: the current dialog's lifetime from its start (else ``[dialog] max_lifetime``).
- ``dlg_bye(side)`` (an effect): ends the current confirmed dialog with a BYE to ``"caller"``, ``"callee"``
  or ``"all"`` (the proxy sends one to each side in every case: the dialog ends for both); 1, or -1.

A dialog leaves all its profiles the moment it ends, so ``get_profile_size`` limits concurrent calls.

The profile calls (``set``/``unset_dlg_profile``, ``get_profile_size``) are effects: with ``[dialog] store =
"redis://..."`` they write and count in Redis, over every instance sharing it, and the route waits for that
(in a worker thread, never blocking the proxy). Redis unreachable: ``get_profile_size`` returns -1 and
leaves the pseudo-variable alone; set/unset still update the local dialog. ``is_in_profile`` answers from
the dialog this instance tracks (it is the only writer of that dialog's membership).
"""

from __future__ import annotations

import logging
from typing import Any

from trioproxy.dialog import Dialog, DialogState, EndReason
from trioproxy.dialog.redis_profiles import member_of
from trioproxy.dialog.service import current_dialogs
from trioproxy.sip import Request, Response, SIPError, reason_phrase

from .ksr_acc import extra_fields
from .ksr_core import _Mod
from .pv import get_pv, set_pv
from .services import RouteServices
from .state import RequestState

__all__ = [
    "DIALOG_HANDLERS",
    "DIALOG_SHIMS",
    "Dialog_",
    "current_dialog",
    "request_done",
    "response_seen",
    "transaction_done",
]

log = logging.getLogger("trioproxy.dialog")

# Effects: dlg_bye sends BYEs; the profile calls may wait for the shared store (Redis).
DIALOG_SHIMS: dict[str, str] = {
    "dlg_bye": "dlg_bye",
    "set_dlg_profile": "set_dlg_profile",
    "set_dlg_profile_static": "set_dlg_profile",
    "unset_dlg_profile": "unset_dlg_profile",
    "unset_dlg_profile_static": "unset_dlg_profile",
    "get_profile_size": "get_profile_size",
    "get_profile_size_static": "get_profile_size_static",
}


def _text(state: RequestState, value: Any) -> str:
    text = "" if value is None else str(value)
    if text.startswith("$"):
        return str(get_pv(state, text) or "")
    return text


def current_dialog(state: RequestState) -> Dialog | None:
    """The tracked dialog of the message a route works on."""
    try:
        return current_dialogs().store.find(state.req if state.is_request else state.msg)
    except (SIPError, ValueError):
        return None


class Dialog_(_Mod):
    """``KSR.dialog``."""

    def dlg_manage(self) -> int:
        """Track the dialog of this initial INVITE: 1, or -1 (not an initial INVITE, table full)."""
        st = self._st
        msg = st.msg
        if not isinstance(msg, Request) or msg.method != "INVITE" or msg.to.tag is not None:
            return -1
        service = current_dialogs()
        source = str(msg.source) if msg.source is not None else ""
        try:
            dialog = service.store.manage(msg, service.now(), source)
        except SIPError:
            return -1
        return -1 if dialog is None else 1

    def is_known_dlg(self) -> int:
        return 1 if current_dialog(self._st) is not None else -1

    def is_in_profile(self, profile: str, value: Any = None) -> int:
        dialog = current_dialog(self._st)
        if dialog is None:
            return -1
        return current_dialogs().store.is_in_profile(dialog, str(profile), _text(self._st, value))

    def is_in_profile_static(self, profile: str) -> int:
        return self.is_in_profile(profile)

    def dlg_set_timeout(self, seconds: Any) -> int:
        dialog = current_dialog(self._st)
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            return -1
        if dialog is None or value <= 0:
            return -1
        dialog.lifetime = value
        service = current_dialogs()
        if service.shared is not None:
            service.shared.retime(dialog, service.now())
        return 1


async def _dlg_bye(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    del services
    side = str(args[0]) if args and args[0] is not None else "all"
    if side not in ("all", "caller", "callee"):
        return -1
    dialog = current_dialog(state)
    if dialog is None:
        return -1
    return 1 if await current_dialogs().bye(dialog) > 0 else -1


def _arg(args: tuple[Any, ...], i: int) -> Any:
    return args[i] if len(args) > i else None


async def _set_profile(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    """``set_dlg_profile(profile[, value])``: 1, or -1 (no managed dialog, undeclared profile...)."""
    del services
    dialog = current_dialog(state)
    if dialog is None:
        return -1
    service = current_dialogs()
    profile, value = str(_arg(args, 0)), _text(state, _arg(args, 1))
    rc = service.store.set_profile(dialog, profile, value)
    key = service.store.profile_key(profile, value)
    if rc == 1 and key is not None and service.shared is not None:
        await service.shared.add(dialog, profile, key, service.now())
    return rc


async def _unset_profile(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    """``unset_dlg_profile(profile[, value])``: 1, or -1 when the dialog was not in it."""
    del services
    dialog = current_dialog(state)
    if dialog is None:
        return -1
    service = current_dialogs()
    profile, value = str(_arg(args, 0)), _text(state, _arg(args, 1))
    before = set(dialog.profiles)
    rc = service.store.unset_profile(dialog, profile, value)
    if rc == 1 and service.shared is not None:
        await service.shared.remove(member_of(dialog), before - dialog.profiles)
    return rc


async def _profile_size(state: RequestState, profile: Any, value: Any, spv: Any) -> int:
    """Store the profile's size in ``spv``: 1, or -1 (undeclared profile, shared store unreachable)."""
    service = current_dialogs()
    name, text = str(profile), _text(state, value)
    size = service.store.profile_size(name, text)
    if size is None:
        return -1
    shared = service.shared
    if shared is not None:
        by_value = text if text and service.store.profile_key(name, text) == text else None
        counted = await shared.size(name, by_value, service.now())
        if counted is None:
            return -1
        size = counted
    set_pv(state, str(spv), size)
    return 1


async def _get_profile_size(state: RequestState, services: RouteServices, args: tuple[Any, ...]) -> int:
    del services
    return await _profile_size(state, _arg(args, 0), _arg(args, 1), _arg(args, 2))


async def _get_profile_size_static(
    state: RequestState, services: RouteServices, args: tuple[Any, ...]
) -> int:
    del services
    return await _profile_size(state, _arg(args, 0), "", _arg(args, 1))


DIALOG_HANDLERS = {
    "dlg_bye": _dlg_bye,
    "set_dlg_profile": _set_profile,
    "unset_dlg_profile": _unset_profile,
    "get_profile_size": _get_profile_size,
    "get_profile_size_static": _get_profile_size_static,
}


# -- what the router feeds the dialogs with (each contained: tracking never breaks a call) --


def request_done(state: RequestState) -> None:
    """After the request route: an in-dialog request it relayed (ACK, BYE...) updates its dialog; a managed
    initial INVITE it relayed records its destination and the accounting extra fields."""
    msg = state.msg
    if not isinstance(msg, Request) or state.relayed <= 0:
        return
    service = current_dialogs()
    try:
        if msg.to.tag is not None:
            service.store.on_request(msg, service.now())
            return
        if msg.method != "INVITE":
            return
        dialog = service.store.find(msg)
        if dialog is not None and not dialog.destination:
            dialog.destination = state.dst_uri or str(msg.uri)
            dialog.extra = extra_fields(state)
    except (SIPError, ValueError) as exc:
        log.info("dialog tracking skipped a %s: %s", msg.method, exc)


def response_seen(response: Response) -> None:
    """A response from downstream on its way to the caller."""
    service = current_dialogs()
    try:
        if response.cseq.method == "INVITE":
            service.store.on_response(response, service.now())
    except (SIPError, ValueError) as exc:
        log.info("dialog tracking skipped a %d: %s", response.status, exc)


def transaction_done(request: Request, status: int | None) -> None:
    """An initial INVITE's transaction ended with ``status`` (None: none sent): unless it confirmed its
    dialog, the dialog failed (a local 408 or 487, a reply from the script...)."""
    if request.method != "INVITE" or request.to.tag is not None:
        return
    service = current_dialogs()
    try:
        dialog = service.store.find(request)
    except (SIPError, ValueError):
        return
    if dialog is None or dialog.state is DialogState.CONFIRMED or (status is not None and status < 300):
        return
    if not dialog.status:
        dialog.status = status or 0
        dialog.reason = reason_phrase(status) if status else ""
    service.store.end(dialog, service.now(), EndReason.FAILED, None)
