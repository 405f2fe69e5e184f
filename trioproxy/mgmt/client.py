"""A small client for the management API on the standard library (``http.client``), for ``trioproxy ctl``."""

from __future__ import annotations

import http.client
import json
from typing import Any

__all__ = ["MgmtClientError", "request"]


class MgmtClientError(Exception):
    """The management API could not be reached or did not answer in HTTP."""


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    timeout: float = 5,
) -> tuple[int, Any]:
    """Send one request; return ``(status, body)``: the decoded JSON for JSON answers, else the text."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Accept": "application/json", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        # A body-less POST/DELETE still says so (Content-Length: 0), as RFC 9110 8.6 asks of a POST.
        conn.request(method, path, body=b"" if method in ("POST", "PUT", "DELETE") else None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        content_type = response.getheader("Content-Type", "")
    except (OSError, http.client.HTTPException) as exc:
        raise MgmtClientError(f"management API at {_where(host, port)}: {exc or type(exc).__name__}") from exc
    finally:
        conn.close()
    text = data.decode("utf-8", "replace")
    if content_type.split(";")[0].strip() == "application/json":
        try:
            return response.status, json.loads(text)
        except ValueError:
            pass
    return response.status, text


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
