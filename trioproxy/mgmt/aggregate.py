"""The management API of a supervisor (``trioproxy run --workers N``): every request answered from all workers.

The supervisor's ``MgmtServer`` dispatches to ``Aggregator`` instead of a ``MgmtApp``. Each worker runs its
own management API on a private loopback port; the aggregator asks every ready worker (in worker threads,
with the standard library client) and combines the answers:

- ``/stats``, ``/health``, ``/dialogs``, ``/trace/<id>``: JSON merged by ``merge_json`` (numbers summed,
  objects merged key by key, lists concatenated, equal values kept, differing ones listed; registration
  counts, read from the shared store, are one worker's; lags, levels and uptimes the largest), plus
  ``"workers"``: index, PID, restarts, readiness and own addresses of each worker;
- ``/metrics``: every series summed over the workers (``merge_metrics``; a process's start time is the
  earliest one, registration counts, lags and levels the largest), plus ``trioproxy_workers`` and
  ``trioproxy_worker_restarts_total``;
- ``POST /reload``, ``/trace``, ``/dispatcher/reload``: sent to every worker; ``ok`` only when every
  worker's answer is, each worker's answer under ``"workers"``;
- registrations, the script, dispatcher and trunk views: one worker's answer (the location store is shared).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from trioproxy.mgmt.metrics import METRICS_CONTENT_TYPE
from trioproxy.mgmt.routes import Reply

__all__ = ["Aggregator", "WorkerView", "merge_json", "merge_metrics"]

# (worker, method, target) -> (HTTP status, decoded body); an unreachable worker raises OSError.
Fetch = Callable[["WorkerView", str, str], Awaitable[tuple[int, Any]]]

_TO_ALL_POSTS = frozenset({"/reload", "/trace", "/dispatcher/reload"})
_MERGED_GETS = frozenset({"/stats", "/health", "/dialogs"})


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the aggregator knows of one worker when a request arrives."""

    index: int
    pid: int | None
    ready: bool
    restarts: int
    mgmt: tuple[str, int] | None
    addresses: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index, "pid": self.pid, "ready": self.ready, "restarts": self.restarts,
            "addresses": list(self.addresses),
        }  # fmt: skip


# Values that are not per worker: read from the shared location store (the same in every worker), or
# levels and delays, where the worst worker tells more than a sum.
_SHARED_KEYS = frozenset({"registrations"})
_SHARED_METRICS = ("trioproxy_registered_",)
_WORST = ("lag", "level", "uptime", "max_fds")


def _worst(name: str) -> bool:
    return any(part in name for part in _WORST)


def merge_json(values: Sequence[Any], key: str = "") -> Any:
    """Combine the same JSON value (at ``key``) from several workers (see the module docstring)."""
    if not values:
        return None
    if key in _SHARED_KEYS:
        return values[0]
    if key and _worst(key) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return max(values)
    if all(isinstance(v, bool) for v in values):
        return values[0] if all(v == values[0] for v in values) else list(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values):
        keys: dict[str, None] = {}
        for v in values:
            keys.update(dict.fromkeys(v))
        return {k: merge_json([v[k] for v in values if k in v], k) for k in keys}
    if all(isinstance(v, list) for v in values):
        return [item for v in values for item in v]
    return values[0] if all(v == values[0] for v in values) else list(values)


def _combine(name: str, old: float, new: float) -> float:
    if name.endswith("_start_time_seconds"):
        return min(old, new)
    if name.endswith("_info") or name.startswith(_SHARED_METRICS) or _worst(name):
        return max(old, new)
    return old + new


def merge_metrics(texts: Iterable[str], extra: Iterable[Metric] = ()) -> bytes:
    """Prometheus text of several workers with every series (name and labels) summed over them."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series[key] = _combine(sample.name, series[key], sample.value) if key in series else sample.value
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    metrics = [*families.values(), *extra]

    class _Collector:
        def collect(self) -> Iterable[Metric]:
            return metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)


class Aggregator:
    """``dispatch(method, target)`` for the supervisor's ``MgmtServer``."""

    def __init__(self, workers: Callable[[], list[WorkerView]], fetch: Fetch) -> None:
        self._workers = workers
        self._fetch = fetch

    async def _ask(self, views: Sequence[WorkerView], method: str, target: str) -> list[tuple[int, Any]]:
        answers: list[tuple[int, Any]] = [(502, {"error": "no answer"})] * len(views)

        async def one(i: int, view: WorkerView) -> None:
            try:
                answers[i] = await self._fetch(view, method, target)
            except OSError as exc:
                answers[i] = (502, {"error": f"worker {view.index}: {exc}"})

        async with trio.open_nursery() as nursery:
            for i, view in enumerate(views):
                nursery.start_soon(one, i, view)
        return answers

    async def dispatch(self, method: str, target: str) -> Reply:
        path = urlsplit(target).path
        views = self._workers()
        reachable = [v for v in views if v.ready and v.mgmt is not None]
        described = [v.describe() for v in views]
        if not reachable:
            return Reply.json(503, {"status": "starting", "error": "no worker is ready", "workers": described})
        if method == "GET" and path == "/metrics":
            answers = await self._ask(reachable, method, target)
            texts = [body for status, body in answers if status == 200 and isinstance(body, str)]
            return Reply(200, merge_metrics(texts, self._own_metrics(views)), METRICS_CONTENT_TYPE)
        merged = method == "GET" and (path in _MERGED_GETS or path.startswith("/trace/"))
        if merged or (method == "POST" and path in _TO_ALL_POSTS):
            answers = await self._ask(reachable, method, target)
            if merged:
                return self._merged(path, answers, described, all_ready=len(reachable) == len(views))
            return self._to_all(answers, reachable)
        status, body = (await self._ask(reachable[:1], method, target))[0]
        if isinstance(body, dict) and path == "/script":
            body = {**body, "workers": described}
        return Reply.json(status, body) if not isinstance(body, str) else Reply(status, body.encode(), "text/plain")

    def _merged(self, path: str, answers: list[tuple[int, Any]], described: list[Any], *, all_ready: bool) -> Reply:
        found = [body for status, body in answers if status < 400 and isinstance(body, dict)]
        if path.startswith("/trace/") and not found:
            return Reply.json(404, answers[0][1])
        if path == "/health":
            healthy = all_ready and all(s == 200 for s, _ in answers) and len(found) == len(answers)
            body = merge_json(found) if found else {}
            body.update(status="ok" if healthy else "degraded", workers=described)
            return Reply.json(200 if healthy else 503, body)
        if not found:
            status, body = answers[0]
            return Reply.json(status, body)
        body = merge_json(found)
        if path == "/stats":
            body["workers"] = described
        return Reply.json(200, body)

    def _to_all(self, answers: list[tuple[int, Any]], views: Sequence[WorkerView]) -> Reply:
        bodies = [body if isinstance(body, dict) else {"error": str(body)} for _status, body in answers]
        ok = all(status < 400 for status, _ in answers) and all(b.get("ok", True) for b in bodies)
        first_bad = next(
            (b for (s, _), b in zip(answers, bodies, strict=True) if s >= 400 or not b.get("ok", True)), None
        )
        body = dict(first_bad if first_bad is not None else bodies[0])
        body["ok"] = ok
        body["workers"] = [{"index": v.index, **b} for v, b in zip(views, bodies, strict=True)]
        status = 200 if ok else max(s for s, _ in answers)
        return Reply.json(status, body)

    @staticmethod
    def _own_metrics(views: Sequence[WorkerView]) -> list[Metric]:
        live = Metric("trioproxy_workers", "Worker processes running and ready.", "gauge")
        live.add_sample("trioproxy_workers", {}, float(sum(1 for v in views if v.ready)))
        restarts = Metric("trioproxy_worker_restarts", "Worker processes restarted after they died.", "counter")
        restarts.add_sample("trioproxy_worker_restarts_total", {}, float(sum(v.restarts for v in views)))
        return [live, restarts]
