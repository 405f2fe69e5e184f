"""Flood protection and limits of a running proxy (``[pike]``, ``[limits]``, ``[htable.NAME]``; see
docs/LIMITS.md): the pike tracker shared by the ingress gate and ``KSR.pike``, the rate-limit pipes, the
declared htables, the transport and proxy limits, overload shedding (``[overload]``), and what the management
API shows of them.

``Protection.start(config)`` builds everything and makes the flood service current for the proxy's tasks;
``apply(proxy)`` sets the proxy core's limits; ``close`` removes the metric source.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from trioproxy.auth import FailureCounts
from trioproxy.config import Config
from trioproxy.flood import FloodGate, PikeConfig, PikeTracker, RateLimiter, Trusted
from trioproxy.flood.overload import OverloadConfig, OverloadDetector
from trioproxy.flood.shed import IngressShedder
from trioproxy.mgmt import MetricFamily, Sample
from trioproxy.mgmt.metrics import add_metric_source
from trioproxy.proxy import Proxy
from trioproxy.routing import HtableStore
from trioproxy.routing.ksr_pike import FloodService, set_flood_service
from trioproxy.sip.limits import set_parser_limits
from trioproxy.transport import TransportConfig, Transports

__all__ = ["Protection", "build_htables", "transport_config"]


def transport_config(config: Config) -> TransportConfig:
    """The transports' tunables from ``[proxy]`` and ``[limits]``."""
    limits = config.limits
    return TransportConfig(
        incoming_capacity=config.proxy.udp_queue,
        idle_timeout=config.proxy.tcp_idle_timeout,
        ws_ping_interval=config.proxy.ws_ping_interval,
        max_message_size=limits.tcp_max_message_size,
        udp_max_message_size=limits.udp_max_message_size,
        max_connections=limits.tcp_max_connections,
        max_connections_per_source=limits.tcp_max_connections_per_source,
        message_timeout=limits.tcp_message_timeout,
    )


def build_htables(config: Config) -> HtableStore:
    """The ``KSR.htable`` store with the tables ``[htable.NAME]`` declares."""
    store = HtableStore()
    for name, table in config.htable:
        store.declare(name, table.autoexpire, update_expire=table.updateexpire, size=table.size)
    return store


class Protection:
    """The flood service, the ingress gate and the metric source of one ``serve()``."""

    def __init__(self, config: Config) -> None:
        pike = config.pike
        tracker = PikeTracker(
            PikeConfig(
                sampling_time_unit=pike.sampling_time_unit,
                reqs_density_per_unit=pike.reqs_density_per_unit,
                remove_latency=pike.remove_latency,
                block_time=pike.block_time,
                max_sources=pike.max_sources,
                auth_failures=pike.auth_failures,
                auth_window=pike.auth_window,
            ),
            Trusted(pike.trusted),
        )
        self.config = config
        self.service = FloodService(
            tracker, RateLimiter(config.limits.ratelimit_interval), gate_counts=pike.enabled
        )
        self.gate = FloodGate(tracker, enabled=pike.enabled, action=pike.action)
        self.proxy: Proxy | None = None
        self.transports: Transports | None = None
        self._remove_metrics = add_metric_source(self.metric_families)

    @classmethod
    def start(cls, config: Config) -> Protection:
        """Build from ``config``, apply the parser limits, make the flood service current."""
        set_parser_limits(
            max_headers=config.limits.max_headers, max_line_length=config.limits.max_line_length
        )
        protection = cls(config)
        set_flood_service(protection.service)
        return protection

    def watch_auth_failures(self, failures: FailureCounts) -> None:
        """Let failed digest authentications feed the tracker (``[pike] auth_failures``)."""
        if self.config.pike.auth_failures > 0:
            tracker = self.service.tracker
            failures.listeners.append(
                lambda source: source and tracker.auth_failed(source, trio.current_time())
            )

    def apply(self, proxy: Proxy, transports: Transports) -> None:
        """Set the proxy core's limits (and read the transports' counters for the metrics)."""
        limits = self.config.limits
        proxy.max_transactions = limits.max_transactions
        proxy.max_transactions_per_source = limits.max_transactions_per_source
        proxy.retry_after = limits.retry_after
        proxy.max_breadth = limits.max_breadth
        ov = self.config.overload
        if ov.enabled:
            detector = OverloadDetector(OverloadConfig(lag_high=ov.lag_high, lag_low=ov.lag_low))
            proxy.overload = detector
            proxy.overload_action = ov.action
            proxy.overload_retry_after = ov.retry_after
            proxy.overload_probe_interval = ov.probe_interval
            # UDP requests are decided at the ingress on their raw bytes; the core decides for the others.
            self.gate.shedder = IngressShedder(detector, action=ov.action, retry_after=ov.retry_after)
        self.proxy = proxy
        self.transports = transports

    def stats(self) -> dict[str, Any]:
        """The ``pike`` part of ``GET /stats``: blocked sources now and the counters."""
        tracker = self.service.tracker
        st = tracker.stats
        out: dict[str, Any] = {
            "enabled": self.gate.enabled,
            "action": self.gate.action,
            "tracked_sources": len(tracker),
            "blocked": tracker.entries(trio.current_time()),
            "blocks": st.blocks,
            "auth_blocks": st.auth_blocks,
            "dropped": st.dropped,
            "rejected": st.rejected,
            "evicted": st.evicted,
            "pipes": self.service.limiter.snapshot()
            if len(self.service.limiter) <= 100
            else len(self.service.limiter),
            "pipe_refused": self.service.limiter.refused,
        }
        if self.proxy is not None:
            out["limited_requests"] = self.proxy.limited
        return out

    def overload_stats(self) -> dict[str, Any]:
        """The ``overload`` part of ``GET /stats``: the shedding level now and the counters."""
        detector = self.proxy.overload if self.proxy is not None else None
        if detector is None:
            return {"enabled": False}
        st = detector.stats
        return {
            "enabled": True,
            "action": self.config.overload.action,
            "overloaded": detector.overloaded,
            "shed_level": round(detector.level, 3),
            "lag_seconds": round(detector.lag, 6),
            "peak_lag_seconds": round(st.peak_lag, 6),
            "shed": st.shed,
            "absorbed": st.absorbed,
            "episodes": st.episodes,
            "remembered_branches": len(self.gate.shedder) if self.gate.shedder is not None else 0,
        }

    def metric_families(self) -> Iterable[MetricFamily]:
        tracker = self.service.tracker
        st = tracker.stats
        now = trio.current_time()
        yield MetricFamily.single("trioproxy_pike_blocked_sources", "gauge", "Sources blocked by flood protection now",
                                  len(tracker.entries(now)))  # fmt: skip
        yield MetricFamily.single(
            "trioproxy_pike_blocks", "counter", "Blocks started by flood protection", st.blocks
        )
        yield MetricFamily(
            "trioproxy_pike_messages_refused", "counter", "Messages of blocked sources, by what they got",
            [Sample(st.dropped, {"action": "drop"}), Sample(st.rejected, {"action": "503"})],
        )  # fmt: skip
        yield MetricFamily.single("trioproxy_pike_tracked_sources", "gauge", "Sources tracked by flood protection",
                                  len(tracker))  # fmt: skip
        yield MetricFamily.single("trioproxy_ratelimit_refused", "counter", "Requests over a KSR.pipelimit pipe",
                                  self.service.limiter.refused)  # fmt: skip
        if self.proxy is not None:
            yield MetricFamily.single("trioproxy_requests_limited", "counter",
                                      "New requests answered 503 over max_transactions(_per_source)",
                                      self.proxy.limited)  # fmt: skip
            detector = self.proxy.overload
            if detector is not None:
                yield MetricFamily.single("trioproxy_overload_shed", "counter",
                                          "New requests refused (503 or dropped) while overloaded",
                                          detector.stats.shed)  # fmt: skip
                yield MetricFamily.single("trioproxy_overload_level", "gauge",
                                          "Share of new requests refused now (0: not overloaded)",
                                          detector.level)  # fmt: skip
                yield MetricFamily.single("trioproxy_overload_absorbed", "counter",
                                          "Retransmissions of refused requests and ACKs of their 503s, absorbed",
                                          detector.stats.absorbed)  # fmt: skip
                yield MetricFamily.single("trioproxy_overload_episodes", "counter",
                                          "Times the proxy started shedding", detector.stats.episodes)  # fmt: skip

        if self.transports is not None:
            t = self.transports.statistics()
            for key, help_text in (
                ("tcp_connections_refused", "TCP connections closed at accept: over a connection limit"),
                ("tcp_connections_blocked", "TCP connections closed at accept: the source is blocked"),
                ("tcp_message_timeouts", "TCP connections closed: a message stayed unfinished too long"),
                ("tcp_idle_closed", "TCP connections closed for idleness"),
                ("oversize", "UDP datagrams over the size limit, dropped"),
            ):
                yield MetricFamily.single(f"trioproxy_{key}", "counter", help_text, getattr(t, key))

    def close(self) -> None:
        self._remove_metrics()
