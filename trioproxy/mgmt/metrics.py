"""Prometheus text exposition of the ``MgmtApp`` metrics through prometheus_client.

A custom collector turns the app's ``MetricFamily`` values into prometheus_client metric families when the
registry is scraped (``generate_latest``), so values are live and nothing is kept in Python-side counters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from trioproxy import __version__
from trioproxy.mgmt.app import MetricFamily, MgmtApp

__all__ = ["METRICS_CONTENT_TYPE", "AppCollector", "build_registry", "render_metrics"]

log = logging.getLogger("trioproxy.mgmt")

# The Prometheus text format, version 0.0.4, which every Prometheus server and agent reads.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def to_prometheus(family: MetricFamily) -> Metric:
    """One app family as a prometheus_client ``Metric``."""
    name = family.name
    sample_name = name
    if family.type == "counter":
        name = name.removesuffix("_total")
        sample_name = name + "_total"
    metric = Metric(name, family.help, family.type)
    for sample in family.samples:
        metric.add_sample(sample_name, dict(sample.labels), float(sample.value))
    return metric


class AppCollector:
    """A prometheus_client collector reading ``app.metrics()`` at each scrape."""

    def __init__(self, app: MgmtApp) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        info = Metric("trioproxy_build_info", "trioproxy's version (always 1).", "gauge")
        info.add_sample("trioproxy_build_info", {"version": __version__}, 1.0)
        yield info
        for family in self._app.metrics():
            yield to_prometheus(family)


def build_registry(app: MgmtApp, *, process_metrics: bool = True) -> CollectorRegistry:
    """A registry holding the app's collector (and the process's CPU, memory and file-descriptor metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppCollector(app))
    if process_metrics:
        ProcessCollector(registry=registry)
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The text exposition of one scrape."""
    return generate_latest(registry)
