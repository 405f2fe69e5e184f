"""The trio transport layer: UDP, TCP, TLS and WebSocket (ws, wss) listeners, flows, RFC 3581 and RFC 3261 18.2.2 response routing."""

from __future__ import annotations

from .tcp import TCPConnection
from .tls import TLSContexts, TLSSettings
from .transports import Incoming, Transports
from .types import (
    Flow,
    Listen,
    Malformed,
    TransportConfig,
    TransportError,
    TransportStatistics,
    family_of,
)
from .udp import UDPEndpoint
from .via import response_address, response_target, same_ip, stamp_via
from .ws import WSConnection

__all__ = [
    "Flow",
    "Incoming",
    "Listen",
    "Malformed",
    "TCPConnection",
    "TLSContexts",
    "TLSSettings",
    "TransportConfig",
    "TransportError",
    "TransportStatistics",
    "Transports",
    "UDPEndpoint",
    "WSConnection",
    "family_of",
    "response_address",
    "response_target",
    "same_ip",
    "stamp_via",
]
