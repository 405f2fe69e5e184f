"""trioproxy: a stateful SIP proxy on Trio whose routing is written in sandboxed Lua."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
