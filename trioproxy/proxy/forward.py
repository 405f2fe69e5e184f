"""Building the request a branch sends (RFC 3261 16.6) and route pre-processing (16.4), pure.

These functions take the proxy's own addresses as arguments; they never touch a socket or a clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from trioproxy.sip import URI, Address, NameAddr, Request, decrement_max_forwards, parse_uri_untrusted

__all__ = [
    "make_branch_id",
    "next_hop",
    "own_uri",
    "prepare_branch",
    "preprocess_routes",
    "record_route_values",
    "via_value",
]

IsMine = Callable[[URI], bool]


def make_branch_id(loop_hash: str) -> str:
    """A branch parameter unique per branch, carrying the loop-detection hash (16.6 step 8)."""
    return f"z9hG4bK{loop_hash}.{secrets.token_hex(6)}"


def via_value(local: Address, branch: str) -> str:
    host = f"[{local.host}]" if ":" in local.host else local.host
    return f"SIP/2.0/{local.transport.upper()} {host}:{local.port};branch={branch}"


def own_uri(local: Address, *, lr: bool = True, extra: str = "") -> str:
    """The URI this proxy puts in Record-Route (and Path) for one of its listeners."""
    host = f"[{local.host}]" if ":" in local.host else local.host
    tp = "" if local.transport == "udp" else f";transport={local.transport}"
    return f"sip:{host}:{local.port}{tp}{';lr' if lr else ''}{extra}"


def record_route_values(inbound: Address, outbound: Address, params: str = "") -> list[str]:
    """Record-Route values to insert, top first (16.6 step 4; RFC 5658 double Record-Route).

    When the request leaves on another transport or address than it came in on, both are recorded, so that
    requests in either direction of the dialog reach the right side of the proxy.
    """
    if (inbound.transport, inbound.host, inbound.port) == (outbound.transport, outbound.host, outbound.port):
        return [f"<{own_uri(inbound, extra=params)}>"]
    return [f"<{own_uri(outbound, extra=';r2=on' + params)}>", f"<{own_uri(inbound, extra=';r2=on' + params)}>"]


def preprocess_routes(request: Request, is_mine: IsMine) -> str | None:
    """RFC 3261 16.4 on the request in place.

    A strict router upstream puts our Record-Route URI in the Request-URI and the real target in the last
    Route: restore it. A top Route naming us is removed (twice for a double Record-Route). Returns the URI
    parameters of the Route of ours that was removed (``";lr;..."``, for ``check_route_param``), or None.
    """
    uri = request.uri
    if uri.user is None and "lr" in uri.params and is_mine(uri):
        routes = request.get_all("Route")
        if routes:
            last = NameAddr.parse_untrusted(routes[-1])
            request.uri = last.uri
            values = routes[:-1]
            request.remove("Route")
            for v in values:
                request.append("Route", v)
    popped: str | None = None
    while True:
        top = request.get("Route")
        if top is None:
            break
        route_uri = NameAddr.parse_untrusted(top).uri
        if not is_mine(route_uri):
            break
        request.pop_first("Route")
        popped = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in route_uri.params.items()) or ";lr"
    return popped


def prepare_branch(
    base: Request,
    target_uri: URI,
    *,
    path: Sequence[str] = (),
    record_route: Sequence[str] = (),
    max_forwards: bool = True,
) -> tuple[Request, URI]:
    """Copy ``base`` for one branch (16.6 steps 1-6) and return it with the URI of the next hop.

    The Via is added later (:func:`add_via`) once the next hop's transport is known.
    """
    req = base.copy()
    req.uri = target_uri  # step 2
    if max_forwards:
        decrement_max_forwards(req)  # step 3 (not when a script's process_maxfwd did it already)
    for value in reversed(record_route):  # step 4
        req.insert_top("Record-Route", value)
    for value in reversed(path):  # RFC 3327: the Path of a registration becomes the route set
        req.insert_top("Route", value if value.lstrip().startswith("<") else f"<{value}>")
    top = req.get("Route")  # step 6: postprocess routing information
    if top is None:
        return req, req.uri
    route_uri = NameAddr.parse_untrusted(top).uri
    if "lr" in route_uri.params:
        return req, route_uri
    # Strict router next (RFC 3261 16.6 step 6, 16.12): Request-URI goes to the end of Route.
    req.pop_first("Route")
    req.append("Route", f"<{req.uri}>")
    req.uri = route_uri
    return req, route_uri


def next_hop(dst: str | URI | None, fallback: URI) -> URI:
    if dst is None:
        return fallback
    if isinstance(dst, URI):
        return dst
    return parse_uri_untrusted(dst)
