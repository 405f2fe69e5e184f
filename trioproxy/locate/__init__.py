"""RFC 3263 server location: SIP URI -> ordered transport addresses, with a TTL cache and a blocklist."""

from __future__ import annotations

from .blocklist import BlockEntry, Blocklist
from .cache import NEGATIVE_NOANSWER, NEGATIVE_NXDOMAIN, CacheEntry, DnsCache
from .config import ResolverConfig, build_resolver
from .errors import LocateError
from .locator import Locator
from .records import (
    NAPTR_SERVICES,
    SRV_PREFIXES,
    TRANSPORT_PREFERENCE,
    NaptrRecord,
    SrvRecord,
    default_port,
    default_transport,
    is_ip_address,
    order_srv,
    select_naptr,
    srv_transports,
    uri_transport,
)

__all__ = [
    "NAPTR_SERVICES",
    "NEGATIVE_NOANSWER",
    "NEGATIVE_NXDOMAIN",
    "SRV_PREFIXES",
    "TRANSPORT_PREFERENCE",
    "BlockEntry",
    "Blocklist",
    "CacheEntry",
    "DnsCache",
    "LocateError",
    "Locator",
    "NaptrRecord",
    "ResolverConfig",
    "SrvRecord",
    "build_resolver",
    "default_port",
    "default_transport",
    "is_ip_address",
    "order_srv",
    "select_naptr",
    "srv_transports",
    "uri_transport",
]
