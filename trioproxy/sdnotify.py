"""systemd's notification protocol (sd_notify) without systemd libraries.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a unix datagram socket (a leading ``@`` names one in
the abstract namespace); the service sends newline-separated ``KEY=VALUE`` assignments to it: ``READY=1``
once listening, ``RELOADING=1`` (with ``MONOTONIC_USEC``) then ``READY=1`` around a reload, ``STOPPING=1``,
``STATUS=...`` free text shown by ``systemctl status``, ``WATCHDOG=1`` keep-alives. Without the variable
every call is a no-op returning False, so the proxy runs the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "status", "stopping", "watchdog", "watchdog_interval"]

log = logging.getLogger("trioproxy.sdnotify")


def notify(state: str) -> bool:
    """Send ``state`` to ``$NOTIFY_SOCKET``; True when sent, False when unset or on a socket error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # the abstract namespace
    elif address[0] != "/":
        log.warning("NOTIFY_SOCKET is neither a path nor an abstract name: %r", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a stuck service manager must not stall the event loop (a full queue loses the
            # message, as with sd_notify's own datagram).
            sock.setblocking(False)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("cannot notify the service manager at %r: %s", address.replace("\0", "@"), exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """The service is up (``READY=1``), with an optional status line."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else ""))


def reloading() -> bool:
    """A reload has started; send ``ready()`` when it is done.

    ``MONOTONIC_USEC`` (CLOCK_MONOTONIC in microseconds) is what ``Type=notify-reload`` requires to tell
    this reload from an earlier one; older systemd versions ignore it.
    """
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    """The service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A one-line status for ``systemctl status`` (``STATUS=...``)."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """A watchdog keep-alive (``WATCHDOG=1``); send it every ``watchdog_interval() / 2`` seconds."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog period in seconds when systemd asks this process for keep-alives (``WatchdogSec=``)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
