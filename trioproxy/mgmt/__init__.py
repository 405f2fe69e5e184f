"""The management API: HTTP/1.1 (h11 on trio), Prometheus metrics, and the ``trioproxy ctl`` client.

The package does not import the proxy core: the shell implements ``MgmtApp`` and passes it to ``MgmtServer``.
"""

from __future__ import annotations

from trioproxy.mgmt.app import JSONDict, MetricFamily, MetricType, MgmtApp, Sample
from trioproxy.mgmt.client import MgmtClientError, request
from trioproxy.mgmt.ctl import add_ctl_arguments, ctl_main, parse_mgmt_address
from trioproxy.mgmt.metrics import METRICS_CONTENT_TYPE, AppCollector, build_registry, render_metrics
from trioproxy.mgmt.routes import Endpoints, Reply
from trioproxy.mgmt.server import DEFAULT_HOST, DEFAULT_PORT, MgmtServer

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "METRICS_CONTENT_TYPE",
    "AppCollector",
    "Endpoints",
    "JSONDict",
    "MetricFamily",
    "MetricType",
    "MgmtApp",
    "MgmtClientError",
    "MgmtServer",
    "Reply",
    "Sample",
    "add_ctl_arguments",
    "build_registry",
    "ctl_main",
    "parse_mgmt_address",
    "render_metrics",
    "request",
]
