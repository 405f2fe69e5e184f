"""Request validation (RFC 3261 16.3) and loop detection (16.3 step 4, 16.6 step 8, RFC 5393), pure.

``check_request`` returns ``None`` when the request may be routed, or a ``Rejection`` naming the status,
reason and extra headers to answer with. Loop detection uses the branch parameter of our own Via: when we
forward, the branch carries a hash of the fields that decide where a request goes (16.6 step 8: Request-URI,
To tag, From tag, Call-ID, CSeq number, Route, Proxy-Require, Proxy-Authorization). A request that comes back
with our Via and the same hash is a loop (482); with another hash it is a spiral (the Request-URI changed,
for example by a redirect or a location lookup) and is forwarded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from trioproxy.sip import Request, SIPError

__all__ = ["SUPPORTED_OPTIONS", "SUPPORTED_SCHEMES", "Rejection", "check_request", "loop_hash"]

SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
# Option tags this proxy understands in Proxy-Require (16.3 step 5). None yet.
SUPPORTED_OPTIONS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def loop_hash(request: Request) -> str:
    """The loop-detection part of our branch parameter (16.6 step 8), 10 hex digits."""
    to_tag = request.to.tag or ""
    from_tag = request.from_.tag or ""
    parts = [
        str(request.uri),
        to_tag,
        from_tag,
        request.call_id,
        str(request.cseq.seq),
        ",".join(request.get_all("Route")),
        ",".join(request.get_all("Proxy-Require")),
        ",".join(request.get_all("Proxy-Authorization")),
    ]
    return hashlib.blake2s("\x00".join(parts).encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()


def _is_loop(request: Request, own_sent_by: Collection[tuple[str, int]]) -> bool:
    # 16.3 step 4: a Via of ours whose branch holds the same hash means the request came back unchanged.
    mine = None
    for via in request.vias:
        port = via.port or 5060
        if (via.host.lower(), port) in own_sent_by:
            branch = via.branch or ""
            if branch.startswith("z9hG4bK") and "." in branch:
                if mine is None:
                    mine = loop_hash(request)
                if branch[7:].split(".", 1)[0] == mine:
                    return True
    return False


def check_request(
    request: Request,
    *,
    own_sent_by: Collection[tuple[str, int]],
    supported_options: Collection[str] = SUPPORTED_OPTIONS,
    max_forwards_for_us: bool = False,
) -> Rejection | None:
    """Validate a request before routing it (16.3 steps 1-5). ``None`` means go on."""
    # Step 2: URI scheme.
    if request.uri.scheme not in SUPPORTED_SCHEMES:
        return Rejection(416, "Unsupported URI Scheme")
    # Step 3: Max-Forwards. A request with 0 is refused, except an OPTIONS addressed to us (answered locally).
    try:
        mf = request.max_forwards
    except SIPError:
        return Rejection(400, "Bad Max-Forwards")
    if mf is not None and mf <= 0 and not (request.method == "OPTIONS" and max_forwards_for_us):
        return Rejection(483, "Too Many Hops")
    # Step 4: loop detection (RFC 5393 makes it mandatory for forking proxies).
    if request.method not in ("ACK", "CANCEL") and _is_loop(request, own_sent_by):
        return Rejection(482, "Loop Detected")
    # Step 5: Proxy-Require.
    unsupported = [
        tag for tag in (v.strip() for v in request.get_all("Proxy-Require")) if tag and tag not in supported_options
    ]
    if unsupported:
        return Rejection(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
    return None
