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
"""

from __future__ import annotations

import logging
from typing import Any

from trioproxy.dialog import Dialog, DialogState, EndReason
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

DIALOG_SHIMS: dict[str, str] = {"dlg_bye": "dlg_bye"}


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

    def set_dlg_profile(self, profile: str, value: Any = None) -> int:
        dialog = current_dialog(self._st)
        if dialog is None:
            return -1
        return current_dialogs().store.set_profile(dialog, str(profile), _text(self._st, value))

    def set_dlg_profile_static(self, profile: str) -> int:
        return self.set_dlg_profile(profile)

    def unset_dlg_profile(self, profile: str, value: Any = None) -> int:
        dialog = current_dialog(self._st)
        if dialog is None:
            return -1
        return current_dialogs().store.unset_profile(dialog, str(profile), _text(self._st, value))

    def unset_dlg_profile_static(self, profile: str) -> int:
        return self.unset_dlg_profile(profile)

    def is_in_profile(self, profile: str, value: Any = None) -> int:
        dialog = current_dialog(self._st)
        if dialog is None:
            return -1
        return current_dialogs().store.is_in_profile(dialog, str(profile), _text(self._st, value))

    def is_in_profile_static(self, profile: str) -> int:
        return self.is_in_profile(profile)

    def get_profile_size(self, profile: str, value: Any, spv: str) -> int:
        """Store the profile's size in the pseudo-variable ``spv``: 1, or -1 for an undeclared profile."""
        size = current_dialogs().store.profile_size(str(profile), _text(self._st, value))
        if size is None:
            return -1
        set_pv(self._st, str(spv), size)
        return 1

    def get_profile_size_static(self, profile: str, spv: str) -> int:
        return self.get_profile_size(profile, "", spv)

    def dlg_set_timeout(self, seconds: Any) -> int:
        dialog = current_dialog(self._st)
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            return -1
        if dialog is None or value <= 0:
            return -1
        dialog.lifetime = value
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


DIALOG_HANDLERS = {"dlg_bye": _dlg_bye}


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
