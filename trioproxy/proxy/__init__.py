"""The proxy core: RFC 3261 section 16 on trio, with structural forking."""

from __future__ import annotations

from trioproxy.proxy.context import Branch, BranchEvent, RequestContext
from trioproxy.proxy.core import Proxy, ProxyStats, TransportLike, simple_locate
from trioproxy.proxy.forward import prepare_branch, preprocess_routes, record_route_values
from trioproxy.proxy.location_router import LocationRouter, binding_target
from trioproxy.proxy.response_context import Disposition, ResponseContext
from trioproxy.proxy.router import Router, StaticRouter, Target
from trioproxy.proxy.validate import Rejection, check_request, loop_hash

__all__ = [
    "Branch",
    "BranchEvent",
    "Disposition",
    "LocationRouter",
    "Proxy",
    "ProxyStats",
    "Rejection",
    "RequestContext",
    "ResponseContext",
    "Router",
    "StaticRouter",
    "Target",
    "TransportLike",
    "binding_target",
    "check_request",
    "loop_hash",
    "prepare_branch",
    "preprocess_routes",
    "record_route_values",
    "simple_locate",
]
