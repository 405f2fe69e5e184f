"""Building the request a branch sends (RFC 3261 16.6) and route pre-processing (16.4), pure.

These functions take the proxy's own addresses as arguments; they never touch a socket or a clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from trioproxy.sip import (
    URI,
    Address,
    NameAddr,
    Request,
    decrement_max_forwards,
    new_branch,
    parse_uri_untrusted,
)

__all__ = [
    "make_branch_id",
    "next_hop",
    "own_uri",
    "prepare_branch",
    "preprocess_routes",
    "record_route_values",
    "via_value",
    "ws_destinations",
    "ws_flow",
]

IsMine = Callable[[URI], bool]


def make_branch_id(loop_hash: str) -> str:
    """A branch parameter unique per branch, carrying the loop-detection hash (16.6 step 8); its random part
    comes from ``new_branch``'s pooled CSPRNG draws."""
    return f"z9hG4bK{loop_hash}.{new_branch()[7:19]}"


def via_value(local: Address, branch: str) -> str:
    host = f"[{local.host}]" if ":" in local.host else local.host
    return f"SIP/2.0/{local.transport.upper()} {host}:{local.port};branch={branch}"


def own_uri(local: Address, *, lr: bool = True, extra: str = "") -> str:
    """The URI this proxy puts in Record-Route (and Path) for one of its listeners."""
    host = f"[{local.host}]" if ":" in local.host else local.host
    tp = "" if local.transport == "udp" else f";transport={local.transport}"
    return f"sip:{host}:{local.port}{tp}{';lr' if lr else ''}{extra}"


def record_route_values(
    inbound: Address,
    outbound: Address,
    params: str = "",
    *,
    source: Address | None = None,
    dest: Address | None = None,
) -> list[str]:
    """Record-Route values to insert, top first (16.6 step 4; RFC 5658 double Record-Route).

    When the request leaves on another transport or address than it came in on, both are recorded, so that
    requests in either direction of the dialog reach the right side of the proxy. A WebSocket side (RFC
    7118; ``source`` the peer the request came from, ``dest`` the one it goes to) is always recorded on its
    own and carries that peer's flow (``;wsflow=host~port~proto``, see ``ws_flow``): a WebSocket client's
    Contact names an unresolvable host, so in-dialog requests towards it go over this flow.
    """
    ws_in = inbound.transport in _WS and source is not None
    ws_out = outbound.transport in _WS and dest is not None
    if not (ws_in or ws_out) and (inbound.transport, inbound.host, inbound.port) == (
        outbound.transport, outbound.host, outbound.port,
    ):  # fmt: skip
        return [f"<{own_uri(inbound, extra=params)}>"]
    out_extra = ";r2=on" + (_flow_param(dest) if ws_out and dest is not None else "") + params
    in_extra = ";r2=on" + (_flow_param(source) if ws_in and source is not None else "") + params
    return [f"<{own_uri(outbound, extra=out_extra)}>", f"<{own_uri(inbound, extra=in_extra)}>"]


_WS = frozenset({"ws", "wss"})
_WS_PROTO = {"ws": "5", "wss": "6"}  # Kamailio's protocol numbers (as in ``;alias=``)


def _flow_param(peer: Address) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f";wsflow={host}~{peer.port}~{_WS_PROTO[peer.transport]}"


def ws_flow(route_params: str | None) -> Address | None:
    """The WebSocket peer named by a ``;wsflow=host~port~proto`` parameter of our Route removed by 16.4
    pre-processing (``route_params``), or None."""
    if not route_params:
        return None
    for param in route_params.split(";"):
        name, _sep, value = param.partition("=")
        if name.strip().lower() != "wsflow":
            continue
        parts = value.strip().split("~")
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ("5", "6"):
            return None
        host = parts[0].strip("[]")
        return Address("ws" if parts[2] == "5" else "wss", host, int(parts[1]))
    return None


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


def ws_destinations(hop: URI, route_params: str | None, *, explicit: bool = False) -> list[Address] | None:
    """Where a request to a WebSocket next hop goes (RFC 7118), or None when ``hop`` is not one.

    Never located and never connected to: the flow our Route recorded (``ws_flow``, unless the destination
    was set ``explicit``-ly), else the hop's address when it is an IP literal; [] when neither (a browser's
    ``.invalid`` host).
    """
    transport = (hop.transport or "").lower()
    if transport not in _WS:
        return None
    flow = None if explicit else ws_flow(route_params)
    if flow is not None:
        return [flow]
    host = (hop.params.get("maddr") or hop.host).strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return []
    return [Address(transport, host, hop.port or (443 if transport == "wss" else 80))]
