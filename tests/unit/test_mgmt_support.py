"""Helpers for the management API tests: a fake ``MgmtApp``, a server starter and a small HTTP client.

This module holds no tests; the test_mgmt_*.py modules import it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import h11
import trio
import trio.lowlevel

from trioproxy.logsetup import TraceFilter
from trioproxy.mgmt import JSONDict, MetricFamily, MgmtServer, Sample

SCRIPT = {"path": "/etc/trioproxy/routes.lua", "sha256": "ab" * 32, "loaded_at": 1700000000.0}


class FakeApp:
    """An ``MgmtApp`` over plain attributes, recording what it was asked."""

    def __init__(self) -> None:
        self.status = "ok"
        self.invites = 5.0
        self.reload_error: tuple[int, str] | None = None
        self.reloads = 0
        self.fail_stats = False
        self.bindings: dict[str, list[str]] = {
            "sip:alice@example.com": ["sip:alice@192.0.2.1:5060", "sip:alice@192.0.2.2:5060"],
            "sip:bob@example.com": ["sip:bob@192.0.2.3:5060"],
        }
        self.page_calls: list[tuple[str | None, int, int]] = []
        self.traces = TraceFilter()

    def health(self) -> JSONDict:
        return {"status": self.status, "uptime": 12.5}

    def stats(self) -> JSONDict:
        if self.fail_stats:
            raise RuntimeError("stats exploded")
        return {"transactions": {"server": 3, "client": 4}, "udp": {"dropped": 0}}

    def metrics(self) -> Iterable[MetricFamily]:
        return [
            MetricFamily(
                "trioproxy_requests_total",
                "counter",
                "Requests received, by method.",
                [Sample(self.invites, {"method": "INVITE"}), Sample(2, {"method": "BYE"})],
            ),
            MetricFamily.single("trioproxy_transactions", "gauge", "Live transactions.", 7),
        ]

    async def reload(self) -> JSONDict:
        await trio.lowlevel.checkpoint()
        self.reloads += 1
        if self.reload_error:
            line, error = self.reload_error
            return {"ok": False, "file": SCRIPT["path"], "line": line, "error": error}
        return {"ok": True, "file": SCRIPT["path"], "line": None, "error": None}

    async def registrations(self, aor: str | None, offset: int, limit: int) -> JSONDict:
        await trio.lowlevel.checkpoint()
        self.page_calls.append((aor, offset, limit))
        if aor is not None:
            return {"aor": aor, "bindings": [{"contact": c} for c in self.bindings.get(aor, [])]}
        aors = sorted(self.bindings)[offset : offset + limit]
        return {"total": len(self.bindings), "offset": offset, "aors": {a: self.bindings[a] for a in aors}}

    async def unregister(self, aor: str, contact: str | None) -> JSONDict:
        await trio.lowlevel.checkpoint()
        current = self.bindings.get(aor, [])
        keep = [c for c in current if contact is not None and c != contact]
        removed = len(current) - len(keep)
        if keep:
            self.bindings[aor] = keep
        else:
            self.bindings.pop(aor, None)
        return {"removed": removed}

    def script(self) -> JSONDict:
        return {**SCRIPT, "last_reload": {"ok": True, "reloads": self.reloads}}

    def trace(self, call_id: str) -> JSONDict | None:
        messages = self.traces.captured(call_id)
        if messages is None:
            return None
        return {"call_id": call_id, "messages": messages}

    def set_trace(self, *, call_id: str | None, user: str | None, on: bool) -> JSONDict:
        return self.traces.set(call_id=call_id, user=user, on=on)


@dataclass
class Running:
    app: FakeApp
    server: MgmtServer
    port: int


StartServer = Callable[..., Awaitable[Running]]


def starter(nursery: trio.Nursery) -> StartServer:
    """A function starting a MgmtServer (port 0, a FakeApp) in ``nursery``; keyword arguments go to it."""

    async def start(**kwargs: Any) -> Running:
        app = FakeApp()
        server = MgmtServer(app, "127.0.0.1", 0, **kwargs)
        port = await nursery.start(server.serve)
        return Running(app, server, port)

    return start


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


async def http(
    port: int,
    method: str,
    target: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    stream: trio.SocketStream | None = None,
    conn: h11.Connection | None = None,
) -> HTTPResult:
    """One request over a fresh connection (or the ``stream``/``conn`` given, for keep-alive)."""
    own = stream is None
    stream = stream or await trio.open_tcp_stream("127.0.0.1", port)
    conn = conn or h11.Connection(h11.CLIENT)
    all_headers = [("Host", f"127.0.0.1:{port}"), ("Content-Length", str(len(body))), *(headers or [])]
    try:
        data = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
        return await read_response(stream, conn)
    finally:
        if own:
            await stream.aclose()


async def read_response(stream: trio.SocketStream, conn: h11.Connection) -> HTTPResult:
    """Read one whole response with h11's client side."""
    response: h11.Response | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            headers = {k.decode().lower(): v.decode() for k, v in response.headers}
            return HTTPResult(response.status_code, headers, body)
        else:
            raise AssertionError(f"unexpected {event!r}")


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes and read everything until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        return received
    finally:
        await stream.aclose()
