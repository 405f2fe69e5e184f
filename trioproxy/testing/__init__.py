"""Testing helpers: a fake network for the proxy core, and offline route tests on virtual time."""

from __future__ import annotations

from trioproxy.testing.network import CALLER, PROXY, FakeFlow, FakeTransport, Sent
from trioproxy.testing.routes import Call, Leg, RouteTest

__all__ = ["CALLER", "PROXY", "Call", "FakeFlow", "FakeTransport", "Leg", "RouteTest", "Sent"]
