"""The registrar: REGISTER processing (RFC 3261 10.3 steps 6-8, RFC 3327 Path, RFC 5626 instance/reg-id).

Steps 1-5 of 10.3 (domain of the Request-URI, Require, authentication, authorisation, AOR validity) are the
routing script's job; `Registrar.save` starts at step 6. A REGISTER is processed atomically (10.3: "either
processed completely or not at all"): `LocationStore.transact` reads the AOR's bindings, runs the pure plan
(`_plan_bindings`) and applies its puts and removals in one atomic step of the backend, re-checking the
Call-ID/CSeq rule there. REGISTERs for one AOR are serialised in this process by a per-AOR lock.

Out-of-order CSeq (10.3 step 7: same Call-ID, CSeq not higher than the stored binding's): "the update MUST
be aborted and the request fails"; since a REGISTER's bindings are committed all or none (same step, last
paragraph: a failed update "MUST fail with a 500 (Server Error)"), the registrar answers 500 and changes
nothing, rather than silently ignoring the stale binding.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio

from trioproxy.sip import URI, NameAddr, Request, Response, SIPError, make_response, parse_uri_untrusted

from .binding import AddressLike, Binding, aor_key, format_source
from .store import Guard, LocationStore, Plan, guard_blocks

__all__ = ["Registrar", "RegistrarPolicy", "order_bindings", "stages"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """Registrar limits.

    `min_expires`: a non-zero interval below it gets 423 (10.3 step 7). `max_expires`: longer intervals are
    shortened to it. `max_contacts` (0 = unlimited) bounds bindings per AOR; past it, `on_too_many`
    "reject" answers 403 and changes nothing, "drop_oldest" removes the least recently refreshed bindings.
    `path_mode` "strict" answers 420 (Unsupported: path) to a REGISTER carrying Path without
    `Supported: path`; "lenient" then ignores the Path.
    """

    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 86400
    max_contacts: int = 0
    on_too_many: Literal["reject", "drop_oldest"] = "reject"
    path_mode: Literal["strict", "lenient"] = "strict"

    def __post_init__(self) -> None:
        if self.on_too_many not in ("reject", "drop_oldest"):
            raise ValueError(f"on_too_many must be 'reject' or 'drop_oldest', not {self.on_too_many!r}")
        if self.path_mode not in ("strict", "lenient"):
            raise ValueError(f"path_mode must be 'strict' or 'lenient', not {self.path_mode!r}")
        if not 0 <= self.min_expires <= self.max_expires or self.default_expires < 0 or self.max_contacts < 0:
            raise ValueError("registrar policy: need 0 <= min_expires <= max_expires, counts >= 0")


class _Reject(Exception):
    """A REGISTER that fails with `status` (headers added to the response)."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def order_bindings(bindings: list[Binding]) -> list[Binding]:
    """q descending, then most recently refreshed first (higher q tried first, RFC 3261 16.6 step 1)."""
    return sorted(bindings, key=lambda b: (-b.q, -b.last_modified, b.contact))


def stages(bindings: list[Binding]) -> list[list[Binding]]:
    """Group bindings for forking: equal q in one stage (parallel), lower q in later stages (serial)."""
    out: list[list[Binding]] = []
    for b in order_bindings(bindings):
        if out and out[-1][0].q == b.q:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def _unquote(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v or None


def _contact_uri_equal(a: str, b: str) -> bool:
    # RFC 3261 10.3 step 7: contacts are matched with the URI comparison rules of 19.1.4.
    if a == b:
        return True
    try:
        return parse_uri_untrusted(a).equivalent(parse_uri_untrusted(b))
    except SIPError:
        return False


def _key(aor: str | URI) -> str:
    return aor if isinstance(aor, str) else aor_key(aor.user, aor.host)


def _has_option(request: Request, header: str, tag: str) -> bool:
    return any(v.strip().lower() == tag for v in request.get_all(header))


def _ws_flow(request: Request) -> AddressLike | None:
    # RFC 7118 / RFC 5626: a WebSocket client is only reachable over its own connection (its Contact host is
    # typically ".invalid"), so the binding keeps the flow it registered over as its `received` source.
    remote: Any = getattr(getattr(request, "flow", None), "remote", None)
    if remote is not None and getattr(remote, "transport", None) in ("ws", "wss"):
        return remote  # type: ignore[no-any-return]
    return None


def _match(current: dict[str, Binding], entry: Binding) -> Binding | None:
    # RFC 5626 6: a binding with the same +sip.instance and reg-id is the same flow's registration.
    if entry.instance is not None and entry.reg_id is not None:
        for b in current.values():
            if b.instance == entry.instance and b.reg_id == entry.reg_id:
                return b
    # RFC 3261 10.3 step 7: otherwise the contact URIs are compared with the rules of 19.1.4.
    found = current.get(entry.contact)
    if found is not None:
        return found
    for b in current.values():
        if _contact_uri_equal(b.contact, entry.contact):
            return b
    return None


def _plan_star(guard: Guard, snapshot: list[Binding]) -> tuple[list[Binding], list[str]]:
    # 10.3 step 6, "Contact: *": every binding goes, unless one has the same Call-ID and a CSeq not lower
    # than the request's; then the whole request fails.
    for b in snapshot:
        if guard_blocks(b.call_id, b.cseq, guard):
            raise _Reject(500, "Server Internal Error")
    return [], [b.contact for b in snapshot]


def _plan_bindings(
    policy: RegistrarPolicy, entries: list[Binding], guard: Guard, snapshot: list[Binding]
) -> tuple[list[Binding], list[str]]:
    """The puts and removals a REGISTER makes on `snapshot` (pure; may run in a store's worker thread)."""
    current = {b.contact: b for b in snapshot}
    puts: dict[str, Binding] = {}
    removes: set[str] = set()
    for entry in entries:
        match = _match(current, entry)
        if match is not None:
            # 10.3 step 7: same Call-ID and a CSeq not higher than stored -> "the update MUST be aborted
            # and the request fails". Since bindings are committed all or none (same step, last
            # paragraph), the whole REGISTER fails with 500 and nothing changes.
            if match.contact not in puts and guard_blocks(match.call_id, match.cseq, guard):
                raise _Reject(500, "Server Internal Error")
            del current[match.contact]
            puts.pop(match.contact, None)
            if match.contact != entry.contact or entry.expires_at <= entry.last_modified:
                removes.add(match.contact)
        if entry.expires_at <= entry.last_modified:  # expires 0: removal
            removes.add(entry.contact)
            continue
        removes.discard(entry.contact)
        puts[entry.contact] = entry
        current[entry.contact] = entry

    limit = policy.max_contacts
    if limit and len(current) > limit:
        # Past the limit: refuse, or drop the least recently refreshed bindings this REGISTER does not carry.
        victims = sorted(
            (b for b in current.values() if b.contact not in puts), key=lambda b: b.last_modified
        )
        excess = len(current) - limit
        if policy.on_too_many == "reject" or excess > len(victims):
            raise _Reject(403, "Too Many Registered Contacts")
        for b in victims[:excess]:
            removes.add(b.contact)
    return list(puts.values()), sorted(removes)


class Registrar:
    """REGISTER processing over a `LocationStore`; times are epoch seconds passed in by the caller."""

    def __init__(self, store: LocationStore, policy: RegistrarPolicy | None = None) -> None:
        self.store = store
        self.policy = policy or RegistrarPolicy()
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @contextmanager
    def _aor_lock_slot(self, aor: str) -> Iterator[trio.Lock]:
        # One lock per AOR while someone uses it: REGISTERs for one AOR are processed in arrival order
        # (10.3: "processed by a registrar in the order that they are received").
        lock, users = self._locks.get(aor, (trio.Lock(), 0))
        self._locks[aor] = (lock, users + 1)
        try:
            yield lock
        finally:
            lock, users = self._locks[aor]
            if users == 1:
                del self._locks[aor]
            else:
                self._locks[aor] = (lock, users - 1)

    async def save(
        self,
        request: Request,
        *,
        now: float,
        received: AddressLike | str | None = None,
        flags: int = 0,
    ) -> Response:
        """Process a REGISTER (10.3 steps 6-8) and return the response to send (200, 400, 403, 404, 420,
        423 or 500; 500 also when the store fails). `received`: the source to reach a NATed UA at (else a `received` Contact parameter,
        as a NAT helper adds, is used). A REGISTER without Contact is a query."""
        try:
            aor = self.aor_of(request)
            with self._aor_lock_slot(aor) as lock:
                async with lock:
                    return await self._save_locked(request, aor, now, received, flags)
        except _Reject as rej:
            return make_response(request, rej.status, rej.reason, headers=list(rej.headers))
        except SIPError as exc:
            return make_response(request, exc.status, exc.reason)
        except Exception:
            # 10.3 step 7: a failed back-end commit fails the request with 500 (nothing was committed:
            # every backend applies a REGISTER in one transaction or script).
            log.exception("registrar: location store failed")
            return make_response(request, 500, "Server Internal Error")

    @staticmethod
    def aor_of(request: Request) -> str:
        """The AOR key of a REGISTER: user@host of the To URI (10.3 step 5)."""
        uri = request.to.uri
        if uri.scheme not in ("sip", "sips", "tel") or (uri.scheme != "tel" and not uri.host):
            raise _Reject(404, "Not Found")
        return aor_key(uri.user, uri.host)

    async def _save_locked(
        self, request: Request, aor: str, now: float, received: AddressLike | str | None, flags: int
    ) -> Response:
        contacts = request.contacts
        paths: tuple[str, ...] = ()
        if not contacts:
            current = await self.store.get(aor, now)  # 10.3: no Contact, a query
        else:
            paths = self._paths(request)
            guard: Guard = (request.call_id, request.cseq.seq)
            plan: Plan
            if any(c.is_star for c in contacts):
                # 10.3 step 6: "*" only alone and with Expires: 0.
                if len(contacts) != 1 or request.expires != 0:
                    raise _Reject(400, "Invalid Contact: * needs Expires: 0 and no other Contact")
                plan = functools.partial(_plan_star, guard)
            else:
                entries = self._entries(request, aor, contacts, paths, now, received, flags)
                plan = functools.partial(_plan_bindings, self.policy, entries, guard)
            result = await self.store.transact(aor, now, plan, guard=guard)
            if result is None:
                # Another REGISTER with a higher CSeq (on another instance) got there first.
                raise _Reject(500, "Server Internal Error")
            current = result
        # 10.3 step 8: the 200 lists every current binding with its expires; Path echoed (RFC 3327 5.3).
        headers = [("Contact", self._contact_value(b, now)) for b in order_bindings(current)]
        headers += [("Path", p) for p in paths]
        headers.append(("Date", email.utils.formatdate(now, usegmt=True)))
        return make_response(request, 200, "OK", headers=headers)

    def _paths(self, request: Request) -> tuple[str, ...]:
        values = request.get_all("Path")
        if not values:
            return ()
        if _has_option(request, "Supported", "path"):
            return tuple(str(p) for p in request.paths)
        if self.policy.path_mode == "strict":
            raise _Reject(420, "Bad Extension", (("Unsupported", "path"),))
        return ()

    def _expires_of(self, contact: NameAddr, request: Request) -> int:
        # 10.3 step 7: the Contact's expires parameter, else the Expires header, else the local default.
        value = contact.expires
        if value is None:
            value = request.expires
        if value is None:
            value = self.policy.default_expires
        if 0 < value < self.policy.min_expires:
            raise _Reject(423, "Interval Too Brief", (("Min-Expires", str(self.policy.min_expires)),))
        return min(value, self.policy.max_expires)

    def _entries(
        self,
        request: Request,
        aor: str,
        contacts: list[NameAddr],
        paths: tuple[str, ...],
        now: float,
        received: AddressLike | str | None,
        flags: int,
    ) -> list[Binding]:
        # Everything the request says, checked and turned into bindings before the store is touched; an
        # entry with expires_at == now asks for removal.
        call_id = request.call_id
        cseq = request.cseq.seq
        user_agent = request.get("User-Agent")
        socket = self._socket_of(request)
        if received is None:
            received = _ws_flow(request)
        entries = []
        for na in contacts:
            expires = self._expires_of(na, request)
            source = received if received is not None else _unquote(na.params.get("received"))
            entry = Binding(
                aor=aor, contact=str(na.uri), expires_at=now + expires, q=na.q, call_id=call_id,
                cseq=cseq, path=paths, received=format_source(source) if source is not None else None,
                socket=socket, instance=_unquote(na.params.get("+sip.instance")), reg_id=self._reg_id(na),
                user_agent=user_agent, last_modified=now, flags=flags,
            )  # fmt: skip
            entries.append(entry)
        return entries

    @staticmethod
    def _reg_id(contact: NameAddr) -> int | None:
        text = contact.params.get("reg-id")
        if text is None:
            return None
        if not text.isdigit() or not text.isascii() or len(text) > 10:
            raise _Reject(400, "Bad reg-id")
        return int(text)

    @staticmethod
    def _socket_of(request: Request) -> str | None:
        local: Any = getattr(getattr(request, "flow", None), "local", None)
        if local is None or not all(hasattr(local, a) for a in ("transport", "host", "port")):
            return None
        return format_source(local)

    @staticmethod
    def _contact_value(b: Binding, now: float) -> str:
        value = f"<{b.contact}>;expires={b.expires_in(now)}"
        if b.q != 1.0:
            value += f";q={b.q:g}"
        if b.instance is not None:
            value += f';+sip.instance="{b.instance}"'
        if b.reg_id is not None:
            value += f";reg-id={b.reg_id}"
        return value

    async def lookup(self, aor: str | URI, now: float) -> list[Binding]:
        """Current bindings of `aor` (a key or a URI such as the Request-URI), q descending then most
        recent first."""
        return order_bindings(await self.store.get(_key(aor), now))

    async def registered(self, aor: str | URI, now: float | None = None) -> bool:
        """True when `aor` has at least one binding not expired at `now` (default: the wall clock)."""
        return bool(await self.store.get(_key(aor), time.time() if now is None else now))

    async def unregister(
        self, aor: str | URI, contact: str | None = None, *, now: float | None = None
    ) -> int:
        """Remove every binding of `aor`, or only those matching `contact` (19.1.4); returns how many."""
        aor = _key(aor)
        if contact is None:
            return await self.store.delete_aor(aor)
        removed = 0
        for b in await self.store.get(aor, float("-inf") if now is None else now):
            if _contact_uri_equal(b.contact, contact) and await self.store.delete(aor, b.contact):
                removed += 1
        return removed
