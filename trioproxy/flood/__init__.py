"""Flood protection and rate limits without I/O: the pike tracker (per-source request rates and blocks),
named rate-limit pipes, and the ingress gate the transports consult before parsing (docs/LIMITS.md)."""

from __future__ import annotations

from .gate import FloodGate, Verdict
from .pike import PikeConfig, PikeStats, PikeTracker, Trusted
from .ratelimit import RateLimiter

__all__ = ["FloodGate", "PikeConfig", "PikeStats", "PikeTracker", "RateLimiter", "Trusted", "Verdict"]
