"""The narrow interfaces between the parts of the proxy core.

- ``BranchEvent``: what the dispatcher hands the owner of a client transaction (a response, or a timeout or
  transport error that acts as a local 408 / 503).
- ``TransactionUser``: the owner of a client transaction (a branch, or a client of the proxy's own such as a
  trunk registration or an OPTIONS probe); the dispatcher calls its ``deliver`` and never blocks on it.
- ``TransportLike``: what the proxy needs of the transport layer; ``simple_locate``: next hops without DNS
  service records (the default when no ``Locator`` is given).
- ``Core``: what a request (``trioproxy.proxy.request``) and its branches (``trioproxy.proxy.branch``) need of
  the proxy: answering upstream through the server transaction, starting and abandoning client
  transactions, locating next hops, forwarding statelessly and the few settings they read. ``Proxy``
  implements it; the request and branch modules never import the proxy.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from trioproxy.sip import URI, Address, Request, Response
from trioproxy.transaction import ClientTransaction, ServerTransaction, Timers

if TYPE_CHECKING:
    from trioproxy.proxy.router import Router, Target

__all__ = [
    "BranchEvent",
    "Core",
    "RelayTimers",
    "TransactionUser",
    "TransportLike",
    "default_port",
    "simple_locate",
]


@dataclass(frozen=True, slots=True)
class BranchEvent:
    """What the dispatcher hands a branch: a response, or a local 408 (timeout) / 503 (transport error)."""

    response: Response | None = None
    timeout: bool = False
    transport_error: bool = False


class TransactionUser:
    """The owner of a client transaction (``Proxy.start_client``): its events reach ``deliver``."""

    def deliver(self, event: BranchEvent) -> None:
        """Called by the dispatcher or the timer task (never blocks)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class RelayTimers:
    """Kamailio's ``fr_timer`` (wait for a first reply on a branch) and ``fr_inv_timer`` (ring time after a
    provisional, Timer C), in seconds; None keeps the proxy's default."""

    fr: float | None = None
    fr_inv: float | None = None


class Core(Protocol):
    """What a request and its branches need of the proxy core (``Proxy`` implements it)."""

    timers: Timers
    router: Router
    max_breadth: int

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a task in the request nursery, inside a boundary."""

    async def respond(
        self, txn: ServerTransaction | None, flow: Any, response: Response, *, no_connect: bool = False
    ) -> None:
        """Send a response upstream: through the server transaction, or statelessly over ``flow``."""

    async def start_branch(self, request: Request, dest: Address, user: TransactionUser) -> ClientTransaction:
        """Start a branch's client transaction and send its request (a failure comes as an event)."""

    async def send_cancel(self, cancel: Request, dest: Address) -> None:
        """Send a CANCEL in a client transaction of its own (its responses are absorbed)."""

    def abandon_client(self, txn: ClientTransaction) -> None:
        """Stop a client transaction that got no answer in time: it sends nothing more."""

    async def locate(self, uri: URI) -> list[Address]: ...

    def filter_blocked(self, dests: list[Address]) -> list[Address]: ...

    def block(self, dest: Address, status: int) -> None: ...

    def local_address(self, dest: Address) -> Address: ...

    def record_address(self, local: Address) -> Address:
        """What to record in Record-Route for a request received at ``local`` (a worker's own port)."""

    def flow_open(self, dest: Address) -> bool:
        """Whether a message to ``dest`` can leave now (a WebSocket peer only over its live connection)."""

    def is_myself(self, uri: URI) -> bool: ...

    async def forward_stateless(
        self, request: Request, original: Request, target: Target, route_params: str | None, max_forwards: bool
    ) -> bool:
        """Forward without a transaction (an ACK for a 2xx, a CANCEL matching nothing; 16.10, 16.11)."""


class TransportLike(Protocol):
    """What the proxy needs of the transport layer (``trioproxy.transport.Transports`` or a test fake)."""

    incoming: trio.MemoryReceiveChannel[Any]

    async def send_request(self, msg: Request, dest: Address) -> None: ...

    async def send_response(self, msg: Response, flow: Any) -> None:
        """Also takes ``no_connect=True`` (passed only when set): never open a connection for it."""

    def local_address(self, transport: str, family: socket.AddressFamily = socket.AF_INET) -> Address: ...

    def listen_addresses(self) -> list[Address]: ...

    def record_address(self, local: Address) -> Address:
        """What to record in Record-Route for a request received at ``local`` (a worker's own port)."""
        ...


def default_port(uri: URI) -> int:
    return 5061 if uri.scheme == "sips" else 5060


async def simple_locate(uri: URI) -> list[Address]:
    """Locate a next hop without DNS service records: numeric hosts, or A/AAAA through the system resolver."""
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    port = uri.port or default_port(uri)
    host = uri.host
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    except OSError:
        return []
    seen: list[Address] = []
    for info in infos:
        addr = Address(transport, str(info[4][0]), port)
        if addr not in seen:
            seen.append(addr)
    return seen
