"""Prometheus text exposition of the ``MgmtApp`` metrics through prometheus_client.

A custom collector turns the app's ``MetricFamily`` values into prometheus_client metric families when the
registry is scraped (``generate_latest``), so values are live and nothing is kept in Python-side counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from trioproxy import __version__
from trioproxy.faults import INTERNAL_ERRORS
from trioproxy.mgmt.app import MetricFamily, MgmtApp

__all__ = ["METRICS_CONTENT_TYPE", "AppCollector", "add_metric_source", "build_registry", "render_metrics"]

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


MetricSource = Callable[[], Iterable[MetricFamily]]
_SOURCES: list[MetricSource] = []


def add_metric_source(source: MetricSource) -> Callable[[], None]:
    """Add families from outside the ``MgmtApp`` (authentication failures...) to every scrape; returns the
    function that removes the source again."""
    _SOURCES.append(source)

    def remove() -> None:
        if source in _SOURCES:
            _SOURCES.remove(source)

    return remove


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
        for source in list(_SOURCES):
            for family in source():
                yield to_prometheus(family)
        yield internal_errors_metric()


def internal_errors_metric() -> Metric:
    """``trioproxy_internal_errors_total{where=...}``: unexpected exceptions stopped at a boundary."""
    metric = Metric(
        "trioproxy_internal_errors",
        "Unexpected exceptions contained by an exception boundary (logged with a traceback), by where",
        "counter",
    )
    for where, count in sorted(INTERNAL_ERRORS.snapshot().items()):
        metric.add_sample("trioproxy_internal_errors_total", {"where": where}, float(count))
    return metric


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
