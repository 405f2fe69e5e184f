"""The running service seen from outside: the management API's provider and the live gauges it reads.

``ProxyMgmtApp`` implements ``trioproxy.mgmt.MgmtApp`` over the running layers (proxy core, transports,
locator, location store, script holder); every value is read when asked, except the registration counts
(the store is async, a scrape is not), which a small task refreshes every few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from trioproxy.locate import Locator
from trioproxy.location import LocationStore, aor_key, list_bindings, remove_binding, store_counts
from trioproxy.logsetup import trace_filter
from trioproxy.mgmt import JSONDict, MetricFamily, Sample
from trioproxy.proxy import Proxy
from trioproxy.routing import ReloadResult, ScriptHolder
from trioproxy.sip import SIPError, parse_uri_untrusted
from trioproxy.transport import Transports

__all__ = ["LoopLag", "ProxyMgmtApp", "reload_script"]

log = logging.getLogger("trioproxy")


@dataclass
class LoopLag:
    """Event-loop lag: how late a periodic wake-up is (a busy or blocked loop makes every call late)."""

    interval: float = 0.5
    last: float = 0.0
    worst: float = 0.0  # since the last scrape

    async def run(self) -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(self.interval)
            self.last = max(0.0, trio.current_time() - start - self.interval)
            self.worst = max(self.worst, self.last)

    def take_worst(self) -> float:
        worst, self.worst = self.worst, self.last
        return worst


class ProxyMgmtApp:
    """The management API's view of one running proxy."""

    def __init__(
        self,
        proxy: Proxy,
        transports: Transports,
        store: LocationStore,
        holder: ScriptHolder | None,
        locator: Locator | None,
        lag: LoopLag,
    ) -> None:
        self.proxy = proxy
        self.transports = transports
        self.store = store
        self.holder = holder
        self.locator = locator
        self.lag = lag
        self.started = time.time()
        self.registrations_count = {"aors": 0, "contacts": 0}
        self.protection: Any = None  # trioproxy.protection.Protection: flood protection and limits
        self.uac: Any = None  # trioproxy.uac.client.TrunkRegistry: trunk registrations
        self.dispatcher: Any = None  # trioproxy.dispatcher.Dispatcher: KSR.dispatcher's sets
        self.dialogs: Any = None  # trioproxy.dialog.service.DialogService: KSR.dialog

    async def refresh_counts(self, interval: float = 5.0) -> None:
        """Keep the registration counts of the metrics fresh."""
        while True:
            self.registrations_count = await store_counts(self.store, time.time())
            await trio.sleep(interval)

    # -- MgmtApp ---------------------------------------------------------------------------------------

    def health(self) -> JSONDict:
        status = "draining" if self.proxy.draining else "ok"
        return {"status": status, "uptime": round(time.time() - self.started, 3)}

    def stats(self) -> JSONDict:
        p = self.proxy
        out: JSONDict = {
            "proxy": {
                "requests": dict(p.stats.requests),
                "responses_received": dict(p.stats.responses),
                "responses_sent": dict(p.stats.responses_sent),
                "transactions_handled": p.stats.transactions_handled,
                "requests_active": len(p.active),
                "branches": p.stats.branches,
                "stray_responses": p.stats.stray_responses,
                "malformed": p.stats.malformed,
                "route_errors": p.stats.route_errors,
                "draining": p.draining,
            },
            "transactions": p.table.statistics(),
            "transport": _fields(self.transports.statistics()),
            "registrations": dict(self.registrations_count),
            "event_loop_lag_seconds": round(self.lag.last, 6),
        }
        if self.locator is not None:
            out["dns"] = self.locator.statistics()
            if self.locator.blocklist is not None:
                now = time.monotonic()
                out["blocklist"] = [
                    {"target": str(e.address), "reason": e.reason, "expires_in": round(e.expires - now, 1)}
                    for e in self.locator.blocklist.entries(now)
                ]
        if self.holder is not None:
            out["routing"] = self.holder.statistics()
        if self.protection is not None:
            out["pike"] = self.protection.stats()
            out["overload"] = self.protection.overload_stats()
        if self.uac is not None:
            out["uac"] = self.uac.snapshot(trio.current_time())
        if self.dispatcher is not None:
            out["dispatcher"] = self.dispatcher.snapshot()["probes"]
        if self.dialogs is not None:
            out["dialogs"] = self.dialogs.store.counts()
        return out

    def dialog_list(self, limit: int) -> JSONDict:
        """``GET /dialogs``: counts by state and the first ``limit`` tracked dialogs."""
        if self.dialogs is None:
            return {"counts": {}, "dialogs": []}
        found = self.dialogs.store.dialogs()
        return {"counts": self.dialogs.store.counts(), "dialogs": [d.as_dict() for d in found[:limit]]}

    def metrics(self) -> Iterable[MetricFamily]:
        p = self.proxy
        t = self.transports.statistics()
        txn = p.table.statistics()
        yield MetricFamily(
            "trioproxy_requests_received",
            "counter",
            "SIP requests received, by method",
            [Sample(v, {"method": m}) for m, v in sorted(p.stats.requests.items())],
        )
        yield MetricFamily(
            "trioproxy_responses_received",
            "counter",
            "SIP responses received, by status class",
            [Sample(v, {"class": c}) for c, v in sorted(p.stats.responses.items())],
        )
        yield MetricFamily(
            "trioproxy_responses_sent",
            "counter",
            "SIP responses sent (retransmissions included), by status class",
            [Sample(v, {"class": c}) for c, v in sorted(p.stats.responses_sent.items())],
        )
        yield MetricFamily(
            "trioproxy_transactions_active",
            "gauge",
            "Live transactions, by side and kind",
            [
                Sample(txn.get(k, 0), {"side": k.split("_", 1)[0], "kind": k.split("_", 1)[1]})
                for k in ("server_invite", "server_non_invite", "client_invite", "client_non_invite")
            ],
        )
        yield MetricFamily.single("trioproxy_requests_active", "gauge", "Requests being routed now", len(p.active))
        yield MetricFamily.single(
            "trioproxy_routed_requests", "counter", "Requests routed (validated, given to the router)",
            p.stats.transactions_handled,
        )
        yield MetricFamily.single("trioproxy_branches", "counter", "Branches created (forking)", p.stats.branches)
        yield MetricFamily.single(
            "trioproxy_retransmissions_sent", "counter", "Retransmissions sent by transactions",
            txn.get("retransmissions_sent", 0),
        )
        yield MetricFamily.single("trioproxy_stray_responses", "counter", "Responses matching no transaction",
                                  p.stats.stray_responses)
        yield MetricFamily.single("trioproxy_udp_drops", "counter", "UDP datagrams dropped (ingress full)",
                                  t.udp_drops)
        yield MetricFamily.single("trioproxy_tcp_connections_open", "gauge", "Open TCP connections",
                                  t.tcp_connections_open)
        yield MetricFamily.single("trioproxy_tcp_connections_accepted", "counter", "TCP connections accepted",
                                  t.tcp_connections_accepted)
        yield MetricFamily.single("trioproxy_tcp_connections_opened", "counter", "TCP connections opened",
                                  t.tcp_connections_opened)
        yield MetricFamily.single("trioproxy_registered_aors", "gauge", "Addresses-of-record with a binding",
                                  self.registrations_count["aors"])
        yield MetricFamily.single("trioproxy_registered_contacts", "gauge", "Registered contacts",
                                  self.registrations_count["contacts"])
        yield MetricFamily.single("trioproxy_event_loop_lag_seconds", "gauge",
                                  "Worst lateness of a periodic wake-up since the last scrape", self.lag.take_worst())
        if self.locator is not None:
            dns = self.locator.statistics()
            yield MetricFamily.single("trioproxy_dns_queries", "counter", "DNS queries sent", dns.get("queries", 0))
            yield MetricFamily.single("trioproxy_dns_cache_hits", "counter", "DNS answers served from the cache",
                                      dns.get("cache_hits", 0) + dns.get("negative_hits", 0))
            failures = sum(v for k, v in dns.items() if k.startswith("failures_"))
            yield MetricFamily.single("trioproxy_dns_failures", "counter", "DNS lookups failed", failures)
            if self.locator.blocklist is not None:
                yield MetricFamily.single("trioproxy_blocklist_entries", "gauge", "Destinations blocklisted now",
                                          len(self.locator.blocklist.entries(time.monotonic())))
        if self.holder is not None:
            st = self.holder.stats.as_dict()
            for key, help_text in (
                ("reloads_ok", "Script reloads that succeeded"),
                ("reloads_failed", "Script reloads refused (the old script stays)"),
                ("script_errors", "Route script runtime errors"),
                ("budget_overruns", "Route calls stopped by the instruction budget"),
                ("memory_errors", "Route calls stopped by the memory limit"),
                ("route_calls", "Route function calls"),
            ):
                yield MetricFamily.single(f"trioproxy_script_{key}", "counter", help_text, st.get(key, 0))
            yield MetricFamily(
                "trioproxy_script_info", "gauge", "The active route script",
                [Sample(1, {"sha256": self.holder.sha256 or "", "path": str(self.holder.path or "")})],
            )

        if self.dispatcher is not None:
            dests = self.dispatcher.sets.destinations()
            yield MetricFamily(
                "trioproxy_dispatcher_destination_active", "gauge",
                "Dispatcher destinations selectable (1) or inactive/disabled (0), by set and URI",
                [Sample(int(d.active), {"set": str(d.setid), "uri": d.uri}) for d in dests],
            )
            yield MetricFamily(
                "trioproxy_dispatcher_probes", "counter", "Dispatcher health probes by result",
                [Sample(self.dispatcher.probes_ok, {"result": "ok"}),
                 Sample(self.dispatcher.probes_failed, {"result": "failed"})],
            )

        if self.uac is not None:
            regs = self.uac.snapshot(trio.current_time())
            yield MetricFamily(
                "trioproxy_uac_registered", "gauge", "Trunk registrations in force (1) or not (0), by l_uuid",
                [Sample(int(r["registered"]), {"l_uuid": r["l_uuid"]}) for r in regs],
            )
            yield MetricFamily(
                "trioproxy_uac_register_ok", "counter", "REGISTERs to trunks accepted, by l_uuid",
                [Sample(r["registered_count"], {"l_uuid": r["l_uuid"]}) for r in regs],
            )
            yield MetricFamily(
                "trioproxy_uac_register_failed", "counter", "Trunk registration attempts that failed, by l_uuid",
                [Sample(r["failed_count"], {"l_uuid": r["l_uuid"]}) for r in regs],
            )

        if self.dialogs is not None:
            counts = self.dialogs.store.counts()
            yield MetricFamily(
                "trioproxy_dialogs", "gauge", "Tracked dialogs (KSR.dialog), by state",
                [Sample(counts.get(k, 0), {"state": k}) for k in ("active", "unconfirmed", "early", "confirmed")],
            )

    def dispatcher_list(self) -> JSONDict | None:
        """``GET /dispatcher``: the sets and each destination's state (None: no dispatcher configured)."""
        return None if self.dispatcher is None else dict(self.dispatcher.snapshot())

    def trunk_list(self) -> JSONDict | None:
        """``GET /trunks``: each trunk registration and its state (None: no trunks configured)."""
        if self.uac is None:
            return None
        return {"trunks": self.uac.snapshot(trio.current_time())}

    def dispatcher_reload(self) -> JSONDict | None:
        """``POST /dispatcher/reload``: read the list again (None: no dispatcher configured)."""
        return None if self.dispatcher is None else dict(self.dispatcher.reload())

    async def reload(self) -> JSONDict:
        if self.holder is None:
            return {"ok": False, "file": None, "line": None, "error": "no route script configured"}
        result = reload_script(self.holder, "management API")
        return {
            "ok": result.ok,
            "file": result.path,
            "line": result.line,
            "error": result.error,
            "errors": list(result.errors),
            "warnings": list(result.warnings),
            "sha256": result.sha256,
        }

    async def registrations(self, aor: str | None, offset: int, limit: int) -> JSONDict:
        key = _aor(aor) if aor else None
        return await list_bindings(self.store, time.time(), key, offset=offset, limit=limit)

    async def unregister(self, aor: str, contact: str | None) -> JSONDict:
        return {"removed": await remove_binding(self.store, _aor(aor), contact)}

    def script(self) -> JSONDict:
        h = self.holder
        if h is None:
            return {"path": None, "sha256": None, "loaded_at": None, "last_reload": None}
        last = h.last_reload
        return {
            "path": h.path,
            "sha256": h.sha256,
            "loaded_at": h.loaded_at,
            "last_reload": None
            if last is None
            else {"ok": last.ok, "at": last.at, "line": last.line, "error": last.error, "errors": list(last.errors)},
        }

    def trace(self, call_id: str) -> JSONDict | None:
        routed = self.proxy.traces.get(call_id)
        messages = trace_filter.captured(call_id)
        if routed is None and not messages:
            return None
        return {"call_id": call_id, "requests": routed or [], "messages": messages}

    def set_trace(self, *, call_id: str | None, user: str | None, on: bool) -> JSONDict:
        trace_filter.set(call_id=call_id, user=user, on=on)
        return trace_filter.snapshot()


def reload_script(holder: ScriptHolder, why: str) -> ReloadResult:
    """Reload the route script, logging the outcome (the old script stays when the new one fails)."""
    result = holder.reload()
    if result.ok:
        log.info("script reloaded (%s): %s sha256=%s", why, result.path, result.sha256[:12])
    else:
        log.error("script reload refused (%s), keeping the old one: %s", why, "; ".join(result.errors))
    return result


def _aor(text: str) -> str:
    """``sip:alice@example.com`` (or ``alice@example.com``) as the location service's key."""
    if text.startswith(("sip:", "sips:")):
        try:
            uri = parse_uri_untrusted(text)
        except SIPError:
            return text
        return aor_key(uri.user, uri.host)
    user, sep, host = text.rpartition("@")
    return aor_key(user, host) if sep else text


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in getattr(obj, "__dataclass_fields__", {})}
