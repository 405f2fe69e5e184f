"""The one error type the SIP message layer raises on bad input."""

from __future__ import annotations

__all__ = ["SIPError"]


class SIPError(ValueError):
    """A malformed or unacceptable message; ``status`` is the response to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[type[SIPError], tuple[int, str]]:
        return (SIPError, (self.status, self.reason))
