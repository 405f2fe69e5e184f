"""Shared fixtures for the unit tests."""

from __future__ import annotations

from tests.redis_server import redis_server_url

__all__ = ["redis_server_url"]
