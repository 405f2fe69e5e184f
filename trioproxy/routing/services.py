"""The interface the proxy core implements for the Lua routing layer.

Route scripts run as Lua coroutines on the trio thread. KSR calls that need the proxy or I/O (replying,
relaying, the location service, DNS, sleeping) are Lua shims that yield an *effect*; the bridge in
``script.py`` awaits the matching ``RouteServices`` method below and resumes the coroutine with its result.
Everything else a script decides (record-route, failure route names, timers, flags, branches) is recorded
on the ``RequestState`` for the proxy to read when it relays, or edits the request in place (headers,
``force_rport``, ``record_route_preset``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .state import RequestState

__all__ = ["ContactInfo", "RouteServices"]


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """One registered contact as the routing layer sees it (from ``RouteServices.lookup``).

    ``uri`` is the Contact URI as registered; ``received`` the source URI (``sip:ip:port;transport=x``) when
    the UA registered from behind a NAT, used as the next hop ($du); ``path`` the Path vector (RFC 3327),
    which becomes the route set of the branch.
    """

    uri: str
    q: float = 1.0
    received: str | None = None
    path: tuple[str, ...] = ()
    flags: int = 0


class RouteServices(Protocol):
    """What a route script needs from the proxy. All methods run on the trio thread."""

    async def send_reply(
        self, state: RequestState, status: int, reason: str, headers: Sequence[tuple[str, str]]
    ) -> int:
        """Answer ``state.msg`` (statelessly for sl_*, within the transaction for t_reply); 1 or negative.

        ``headers`` are the ones queued by ``KSR.hdr.append_to_reply``.
        """
        ...

    async def trying(self, state: RequestState) -> None:
        """Send the automatic 100 Trying of an INVITE now, if it has not gone yet (idempotent; nothing for
        other methods). Called before the effects that create the transaction or wait."""
        ...

    async def relay(self, state: RequestState) -> int:
        """Forward to ``state.msg.uri`` / ``state.dst_uri`` plus ``state.branches``; 1 on success, negative
        on failure (e.g. -1 nothing to relay, -2 transport/DNS failure). ``state.forced_dest`` when set by
        ``t_relay_to_proto_addr`` overrides the destination of the first branch."""
        ...

    async def check_trans(self, state: RequestState) -> int:
        """``KSR.tm.t_check_trans``: for a CANCEL or ACK, whether it matches a transaction (the proxy then
        handles it and the result is 0: stop the script); for other requests 1 when a transaction exists."""
        ...

    async def lookup(self, table: str, aor: str) -> Sequence[ContactInfo]:
        """The contacts registered for ``aor`` (``user@host`` key) in ``table``, unexpired, any order."""
        ...

    async def save(self, table: str, state: RequestState, flags: int) -> int:
        """Registrar: apply the REGISTER in ``state.msg`` and send its reply (RFC 3261 10.3); 1 or negative.

        ``state.received_uri`` carries the source to remember when ``fix_nated_register`` was called."""
        ...

    async def unregister(self, table: str, aor: str, ruid: str) -> int:
        """Remove all contacts of ``aor`` (or only the one with ``ruid`` when non-empty); 1 or negative."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend this route (never the proxy) for ``seconds``."""
        ...

    async def resolve(self, host: str) -> Sequence[str]:
        """IP addresses of ``host`` (A/AAAA), empty when none."""
        ...

    def is_myself(self, host: str, port: int | None) -> bool:
        """Whether ``host[:port]`` is one of the proxy's own addresses or domains."""
        ...
