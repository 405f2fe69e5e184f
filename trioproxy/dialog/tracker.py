"""``DialogTracker``: the dialogs of one proxy and their profiles, in memory, sans-IO (time as an input).

Matching: the initial INVITE's dialog is found by Call-ID and From tag; an in-dialog request or a response
by Call-ID and both tags, in either direction (Kamailio matches in-dialog requests by the ``did`` parameter
it puts in its Record-Route; trioproxy needs no such parameter and so also tracks dialogs whose requests
come back without its Record-Route).

Profiles (Kamailio's dialog profiles) are declared in the configuration, with or without values; a dialog
joins them from the script (``set_dlg_profile``) and leaves all of them the moment it ends. Sizes count
active dialogs only.

``DialogStore`` is the interface the routing layer and the proxy use: this memory implementation serves
one process (all its tasks). Between instances, the service mirrors profile membership into Redis
(``redis_profiles``) and counts there.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Protocol

from trioproxy.sip import URI, Request, Response

from .fsm import Dialog, DialogState, EndReason

__all__ = ["DialogStore", "DialogTracker"]

Byes = list[tuple[str, Request]]


class DialogStore(Protocol):
    """What the proxy and the scripts need from the dialogs (memory now; a shared store implements it too)."""

    def manage(self, invite: Request, now: float, source: str = "") -> Dialog | None: ...
    def find(self, msg: Request | Response) -> Dialog | None: ...
    def on_request(self, request: Request, now: float) -> Dialog | None: ...
    def on_response(self, response: Response, now: float) -> Dialog | None: ...
    def end(
        self, dialog: Dialog, now: float, why: EndReason, is_myself: Callable[[URI], bool] | None
    ) -> Byes: ...
    def expire(self, now: float, is_myself: Callable[[URI], bool] | None) -> list[tuple[Dialog, Byes]]: ...
    def set_profile(self, dialog: Dialog, profile: str, value: str) -> int: ...
    def unset_profile(self, dialog: Dialog, profile: str, value: str) -> int: ...
    def is_in_profile(self, dialog: Dialog, profile: str, value: str) -> int: ...
    def profile_size(self, profile: str, value: str) -> int | None: ...
    def profile_key(self, profile: str, value: str) -> str | None: ...
    def dialogs(self) -> list[Dialog]: ...
    def counts(self) -> dict[str, int]: ...


class DialogTracker:
    """The memory ``DialogStore``."""

    def __init__(
        self,
        *,
        profiles_with_value: Iterable[str] = (),
        profiles_no_value: Iterable[str] = (),
        max_lifetime: float = 43200.0,
        max_dialogs: int = 100_000,
    ) -> None:
        self.with_value = frozenset(profiles_with_value)
        self.no_value = frozenset(profiles_no_value)
        self.max_lifetime = max_lifetime
        self.max_dialogs = max_dialogs
        self.listeners: list[Callable[[Dialog], None]] = []  # called once per dialog, when it ends
        self.refused = 0  # dlg_manage calls over max_dialogs
        self._ids = itertools.count(1)
        self._by_key: dict[tuple[str, str], Dialog] = {}
        self._members: dict[str, dict[str, set[Dialog]]] = {p: {} for p in self.with_value | self.no_value}

    # -- dialogs --

    def manage(self, invite: Request, now: float, source: str = "") -> Dialog | None:
        """Track the dialog of an initial INVITE (idempotent); None when the table is full."""
        key = (invite.call_id, invite.from_.tag or "")
        found = self._by_key.get(key)
        if found is not None:
            return found
        if len(self._by_key) >= self.max_dialogs:
            self.refused += 1
            return None
        dialog = Dialog.from_invite(next(self._ids), invite, now, self.max_lifetime, source)
        self._by_key[key] = dialog
        return dialog

    def find(self, msg: Request | Response) -> Dialog | None:
        """The active dialog ``msg`` belongs to: an initial INVITE's (or a response to it) by Call-ID and
        From tag, an in-dialog request by Call-ID and both tags in either direction."""
        call_id, from_tag, to_tag = msg.call_id, msg.from_.tag or "", msg.to.tag
        dialog = self._by_key.get((call_id, from_tag))
        if dialog is not None:
            if isinstance(msg, Response) or to_tag is None or dialog.matches(call_id, from_tag, to_tag):
                return dialog
        if to_tag:
            other = self._by_key.get((call_id, to_tag))
            if other is not None and other.matches(call_id, from_tag, to_tag):
                return other
        return None

    def on_request(self, request: Request, now: float) -> Dialog | None:
        """An in-dialog request passed the proxy; returns its dialog (None: not tracked)."""
        if request.to.tag is None:
            return None
        dialog = self.find(request)
        if dialog is not None and dialog.on_request(request, now) and not dialog.active:
            self._ended(dialog)
        return dialog

    def on_response(self, response: Response, now: float) -> Dialog | None:
        """A response to a tracked INVITE goes to the caller; returns its dialog."""
        dialog = self._by_key.get((response.call_id, response.from_.tag or ""))
        if dialog is not None and dialog.on_response(response, now) and not dialog.active:
            self._ended(dialog)
        return dialog

    def end(
        self, dialog: Dialog, now: float, why: EndReason, is_myself: Callable[[URI], bool] | None
    ) -> Byes:
        """End ``dialog`` from the proxy; the BYEs to send to both sides (none if it was not confirmed)."""
        if not dialog.active:
            return []
        byes = dialog.bye_requests(is_myself)
        dialog.terminate(now, why)
        self._ended(dialog)
        return byes

    def expire(self, now: float, is_myself: Callable[[URI], bool] | None) -> list[tuple[Dialog, Byes]]:
        """End the dialogs older than their lifetime; each with the BYEs to send."""
        stale = [d for d in self._by_key.values() if d.expired(now)]
        return [(d, self.end(d, now, EndReason.LIFETIME, is_myself)) for d in stale]

    def _ended(self, dialog: Dialog) -> None:
        for profile, value in dialog.profiles:
            members = self._members.get(profile, {})
            group = members.get(value)
            if group is not None:
                group.discard(dialog)
                if not group:
                    del members[value]
        dialog.profiles.clear()
        if self._by_key.get((dialog.call_id, dialog.from_tag)) is dialog:
            del self._by_key[(dialog.call_id, dialog.from_tag)]
        for listener in self.listeners:
            listener(dialog)

    def dialogs(self) -> list[Dialog]:
        return list(self._by_key.values())

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in DialogState if s is not DialogState.TERMINATED}
        for d in self._by_key.values():
            out[d.state.value] += 1
        out["active"] = len(self._by_key)
        return out

    # -- profiles --

    def profile_key(self, profile: str, value: str) -> str | None:
        """The key a profile stores: the value for profiles with values, "" for the others; None:
        undeclared, or a profile with values used without one."""
        if profile in self.no_value:
            return ""
        if profile in self.with_value:
            return value if value else None
        return None

    def set_profile(self, dialog: Dialog, profile: str, value: str) -> int:
        """Add an active dialog to a profile: 1, or -1 (undeclared profile, missing value, dialog ended)."""
        key = self.profile_key(profile, value)
        if key is None or not dialog.active:
            return -1
        self._members[profile].setdefault(key, set()).add(dialog)
        dialog.profiles.add((profile, key))
        return 1

    def unset_profile(self, dialog: Dialog, profile: str, value: str) -> int:
        """Remove the dialog from a profile: 1, or -1 when it was not in it."""
        key = self.profile_key(profile, value)
        if key is None or (profile, key) not in dialog.profiles:
            return -1
        dialog.profiles.discard((profile, key))
        group = self._members[profile].get(key, set())
        group.discard(dialog)
        if not group:
            self._members[profile].pop(key, None)
        return 1

    def is_in_profile(self, dialog: Dialog, profile: str, value: str) -> int:
        """1 when the dialog is in the profile (with ``value``, when given), else -1."""
        if profile not in self._members:
            return -1
        if value and profile in self.with_value:
            return 1 if (profile, value) in dialog.profiles else -1
        return 1 if any(p == profile for p, _v in dialog.profiles) else -1

    def profile_size(self, profile: str, value: str) -> int | None:
        """Active dialogs in a profile (with ``value``; all of them without one); None: undeclared."""
        members = self._members.get(profile)
        if members is None:
            return None
        if value and profile in self.with_value:
            return len(members.get(value, ()))
        return sum(len(g) for g in members.values())
