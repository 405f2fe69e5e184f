"""RFC 3581 Via stamping and RFC 3261 18.2.2 response addressing: pure functions, no I/O."""

from __future__ import annotations

import ipaddress

from trioproxy.sip import Address, Request, Via

__all__ = ["response_address", "response_target", "same_ip", "stamp_via"]

_DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


def same_ip(a: str, b: str) -> bool:
    """True when two host strings name the same IP address (``::1`` and ``0:0::1`` do)."""
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def stamp_via(request: Request, source: Address) -> bool:
    """Add ``received``/``rport`` to the top Via of a request that came from ``source``; True if edited.

    RFC 3261 18.2.1: add ``received`` when the sent-by host differs from the packet's source IP.
    RFC 3581 4: when the Via carries an empty ``rport``, fill in the source port and add ``received``
    even if it equals the sent-by host. Otherwise the message is left untouched (no re-serialisation).
    """
    via = request.top_via
    host, _port = via.sent_by
    rport = via.rport
    if rport is True:
        params = dict(via.params)
        params["received"] = source.host
        params["rport"] = str(source.port)
    elif not same_ip(host, source.host) and not (
        via.received is not None and same_ip(via.received, source.host)
    ):
        params = dict(via.params)
        params["received"] = source.host
    else:
        return False
    stamped = Via(via.transport, via.host, via.port, params)
    request.pop_first("Via")
    request.insert_top("Via", str(stamped))
    return True


def response_address(via: Via, transport: str) -> Address:
    """Where a response goes when it cannot reuse the request's connection (RFC 3261 18.2.2, RFC 3581 4).

    UDP with ``maddr``: that address at the sent-by port (or the default). Otherwise ``received`` (or the
    sent-by host) at the ``rport`` value when present, else the sent-by port, else the transport's default.
    """
    host, port = response_target(via, transport)
    return Address(transport, host, port)


def response_target(via: Via, transport: str) -> tuple[str, int]:
    """``response_address`` as a ``(host, port)`` pair (the UDP send path skips building an Address)."""
    params = via.params
    port = via.port or _DEFAULT_PORT.get(transport, 5060)
    if transport == "udp":
        maddr = params.get("maddr")
        if maddr:
            # 18.2.2: "the response MUST be forwarded to the address listed there, using the port
            # indicated in 'sent-by', or port 5060 if none is present".
            return maddr, port
    host = params.get("received") or via.host
    if "rport" in params:
        rport = via.rport
        # RFC 3581 4: "send it to the IP address indicated in the received parameter and the port in rport".
        if rport is not None and rport is not True:
            port = rport
    return host, port
