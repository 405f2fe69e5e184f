"""Transport addresses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Address"]


@dataclass(frozen=True, slots=True)
class Address:
    """Where a message comes from or goes to: ``transport`` lowercase, ``host`` a bare IPv6 or name."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """True for every transport but UDP."""
        return self.transport != "udp"

    @property
    def host_port(self) -> str:
        """``host:port`` with brackets around an IPv6 literal."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.host_port}"
