"""The one error server location raises."""

from __future__ import annotations

__all__ = ["LocateError"]

# what a proxy answers when it cannot find where to send a request (RFC 3261 16.6 step 6 / 16.7 step 6:
# a failed location is handled like a failed branch; RFC 3263 says to treat it as a 503)
_STATUS = {"timeout": 408, "servfail": 503, "error": 503, "unsupported": 416}


class LocateError(Exception):
    """DNS could not give any target: ``kind`` is "timeout", "servfail", "error" or "unsupported".

    A name that definitely does not exist is not an error: ``locate()`` returns an empty list for it.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def status(self) -> int:
        """A status hint for the proxy's answer: 408 for a timeout, 416 for a scheme, 503 otherwise."""
        return _STATUS.get(self.kind, 503)
