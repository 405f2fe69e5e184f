"""The management API's routes: a request line in, a ``Reply`` out (no I/O of its own).

    GET    /health                              liveness; 503 when the app's status is not "ok"
    GET    /metrics                             Prometheus text format 0.0.4
    GET    /stats                               counters of every layer (JSON)
    POST   /reload                              reload the routing script; 422 when the new script is refused
    GET    /script                              the loaded script (path, sha256, loaded_at, last_reload)
    GET    /registrations?aor=&offset=&limit=   one AOR's bindings, or a page of AORs
    DELETE /registrations?aor=&contact=         remove one binding, or all of an AOR (404 when none)
    GET    /dispatcher                          the dispatcher's sets and destination states (404: none)
    POST   /dispatcher/reload                   read the dispatcher list again; 422 when it is refused
    GET    /trunks                              trunk registrations and their states (404: none configured)
    GET    /trace/<call-id>                     what is known of one call (404 when nothing)
    POST   /trace?call_id=|user=&on=1           start (on=1) or stop (on=0) tracing a call or a user

Every JSON answer is an object; errors are ``{"error": "..."}`` with 400, 404 or 405 (with ``Allow``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry

from trioproxy.mgmt.app import JSONDict, MgmtApp
from trioproxy.mgmt.metrics import METRICS_CONTENT_TYPE, build_registry, render_metrics

__all__ = ["JSON_CONTENT_TYPE", "MAX_PAGE", "Endpoints", "Reply"]

log = logging.getLogger("trioproxy.mgmt")

JSON_CONTENT_TYPE = "application/json"
MAX_PAGE = 1000  # the largest ?limit= of /registrations
DEFAULT_PAGE = 100


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        body = json.dumps(data, default=str, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, JSON_CONTENT_TYPE, headers)

    @classmethod
    def error(cls, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls.json(status, {"error": message}, headers)


class BadRequest(Exception):
    """A malformed query: answered 400 with the message."""


class _Query:
    """The query string of one request, with typed, validated reads."""

    def __init__(self, text: str, allowed: frozenset[str]) -> None:
        try:
            pairs = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=16)
        except ValueError as exc:
            raise BadRequest(f"malformed query string: {exc}") from None
        unknown = sorted(set(pairs) - allowed)
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r}")
        for name, values in pairs.items():
            if len(values) > 1:
                raise BadRequest(f"query parameter {name!r} given twice")
        self._values = {name: values[0] for name, values in pairs.items()}

    def text(self, name: str) -> str | None:
        value = self._values.get(name)
        return value if value else None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._values.get(name)
        if value is None or value == "":
            return default
        try:
            number = int(value, 10)
        except ValueError:
            raise BadRequest(f"{name} must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise BadRequest(f"{name} must be between {low} and {high}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self._values.get(name)
        if value is None or value == "":
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise BadRequest(f"{name} must be 1 or 0, got {value!r}")


_Handler = Callable[[str, "_Query"], Awaitable[Reply]]


class Endpoints:
    """Dispatches ``(method, target)`` to the app's callbacks."""

    def __init__(self, app: MgmtApp, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.registry = registry if registry is not None else build_registry(app)
        # path -> method -> (handler, allowed query parameters)
        self._routes: dict[str, dict[str, tuple[_Handler, frozenset[str]]]] = {
            "/health": {"GET": (self._health, frozenset())},
            "/metrics": {"GET": (self._metrics, frozenset())},
            "/stats": {"GET": (self._stats, frozenset())},
            "/reload": {"POST": (self._reload, frozenset())},
            "/script": {"GET": (self._script, frozenset())},
            "/registrations": {
                "GET": (self._registrations, frozenset({"aor", "offset", "limit"})),
                "DELETE": (self._unregister, frozenset({"aor", "contact"})),
            },
            "/trace": {"POST": (self._set_trace, frozenset({"call_id", "user", "on"}))},
            "/trace/": {"GET": (self._trace, frozenset())},
            "/dialogs": {"GET": (self._dialogs, frozenset({"limit"}))},
            "/dispatcher": {"GET": (self._dispatcher, frozenset())},
            "/dispatcher/reload": {"POST": (self._dispatcher, frozenset())},
            "/trunks": {"GET": (self._trunks, frozenset())},
        }

    async def dispatch(self, method: str, target: str) -> Reply:
        """Answer one request; an exception from the app is logged and answered 500."""
        parts = urlsplit(target)
        path = parts.path
        key = "/trace/" if path.startswith("/trace/") else path
        methods = self._routes.get(key)
        if methods is None:
            return Reply.error(404, f"no such resource: {path}")
        entry = methods.get(method)
        if entry is None:
            allow = ", ".join(sorted(methods))
            return Reply.error(405, f"{method} is not allowed on {key.rstrip('/') or key}", (("Allow", allow),))
        handler, allowed = entry
        try:
            return await handler(path, _Query(parts.query, allowed))
        except BadRequest as exc:
            return Reply.error(400, str(exc))
        except Exception:
            log.exception("management request %s %s failed", method, path)
            return Reply.error(500, "internal error (see the proxy's log)")

    # -- the routes ------------------------------------------------------------------------------------------

    async def _health(self, path: str, query: _Query) -> Reply:
        data = self.app.health()
        return Reply.json(200 if data.get("status", "ok") == "ok" else 503, data)

    async def _metrics(self, path: str, query: _Query) -> Reply:
        return Reply(200, render_metrics(self.registry), METRICS_CONTENT_TYPE)

    async def _stats(self, path: str, query: _Query) -> Reply:
        return Reply.json(200, self.app.stats())

    async def _dialogs(self, path: str, query: _Query) -> Reply:
        # Optional in an MgmtApp: ``dialog_list(limit)`` (the running proxy's tracked dialogs).
        lister = getattr(self.app, "dialog_list", None)
        if lister is None:
            return Reply.error(404, "no dialog tracking")
        return Reply.json(200, lister(query.integer("limit", 100, 1, MAX_PAGE)))

    async def _dispatcher(self, path: str, query: _Query) -> Reply:
        # Optional in an MgmtApp: ``dispatcher_list()`` / ``dispatcher_reload()`` (None: no dispatcher).
        reload = path.endswith("/reload")
        call = getattr(self.app, "dispatcher_reload" if reload else "dispatcher_list", None)
        data = call() if call is not None else None
        if data is None:
            return Reply.error(404, "no dispatcher sets configured")
        return Reply.json(422 if reload and not data.get("ok") else 200, data)

    async def _trunks(self, path: str, query: _Query) -> Reply:
        # Optional in an MgmtApp: ``trunk_list()`` (None: no trunk registrations configured).
        lister = getattr(self.app, "trunk_list", None)
        data = lister() if lister is not None else None
        if data is None:
            return Reply.error(404, "no trunk registrations configured")
        return Reply.json(200, data)

    async def _reload(self, path: str, query: _Query) -> Reply:
        result = await self.app.reload()
        # A refused script is the client's content, not a server fault: 422 keeps the old script running.
        return Reply.json(200 if result.get("ok") else 422, result)

    async def _script(self, path: str, query: _Query) -> Reply:
        return Reply.json(200, self.app.script())

    async def _registrations(self, path: str, query: _Query) -> Reply:
        aor = query.text("aor")
        offset = query.integer("offset", 0, 0, 2**31 - 1)
        limit = query.integer("limit", DEFAULT_PAGE, 1, MAX_PAGE)
        return Reply.json(200, await self.app.registrations(aor, offset, limit))

    async def _unregister(self, path: str, query: _Query) -> Reply:
        aor = query.text("aor")
        if aor is None:
            raise BadRequest("aor is required")
        result: JSONDict = await self.app.unregister(aor, query.text("contact"))
        return Reply.json(200 if result.get("removed") else 404, result)

    async def _trace(self, path: str, query: _Query) -> Reply:
        call_id = unquote(path[len("/trace/") :])
        if not call_id:
            raise BadRequest("a Call-ID is required: /trace/<call-id>")
        data = self.app.trace(call_id)
        if data is None:
            return Reply.error(404, f"nothing known of call {call_id!r}")
        return Reply.json(200, data)

    async def _set_trace(self, path: str, query: _Query) -> Reply:
        call_id, user = query.text("call_id"), query.text("user")
        if (call_id is None) == (user is None):
            raise BadRequest("give exactly one of call_id and user")
        return Reply.json(200, self.app.set_trace(call_id=call_id, user=user, on=query.flag("on", True)))
