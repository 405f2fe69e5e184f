"""The proxy core: RFC 3261 section 16 on trio, with structural forking.

``core`` (``Proxy``, the entry point), ``dispatcher`` (the transaction table and timer task), ``request``
(``RequestContext``: the routers' API, stages, best response), ``branch`` (a branch's life), ``interfaces``
(the narrow ``Core`` protocol, ``BranchEvent``, ``TransactionUser``), ``router`` (the routing interface),
``trace`` (recent requests' route decisions); ``forward``, ``validate`` and ``response_context`` are pure.
"""

from __future__ import annotations

from trioproxy.proxy.branch import Branch
from trioproxy.proxy.core import Proxy, ProxyStats, TransportLike, simple_locate
from trioproxy.proxy.forward import prepare_branch, preprocess_routes, record_route_values
from trioproxy.proxy.interfaces import BranchEvent, Core, RelayTimers, TransactionUser
from trioproxy.proxy.location_router import LocationRouter, binding_target
from trioproxy.proxy.request import RequestContext
from trioproxy.proxy.response_context import Disposition, ResponseContext
from trioproxy.proxy.router import Router, StaticRouter, Target
from trioproxy.proxy.validate import Rejection, check_request, loop_hash

__all__ = [
    "Branch",
    "BranchEvent",
    "Core",
    "Disposition",
    "LocationRouter",
    "Proxy",
    "ProxyStats",
    "Rejection",
    "RelayTimers",
    "RequestContext",
    "ResponseContext",
    "Router",
    "StaticRouter",
    "Target",
    "TransactionUser",
    "TransportLike",
    "binding_target",
    "check_request",
    "loop_hash",
    "prepare_branch",
    "preprocess_routes",
    "record_route_values",
    "simple_locate",
]
