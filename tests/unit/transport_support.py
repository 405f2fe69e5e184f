"""Helpers shared by the UDP and TCP transport tests (loopback sockets, bounded by TIMEOUT)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trioproxy.sip import Address, Message
from trioproxy.transport import Flow, Listen, TransportConfig, Transports

TIMEOUT = 10  # seconds, absolute bound for every test


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback on this machine")


def flow_of(msg: Message) -> Flow:
    assert isinstance(msg.flow, Flow)
    return msg.flow


def source_of(msg: Message) -> Address:
    assert msg.source is not None
    return msg.source


@asynccontextmanager
async def serving(listens: list[Listen], config: TransportConfig | None = None) -> AsyncIterator[Transports]:
    transports = Transports(listens, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(transports.serve)
        yield transports
        nursery.cancel_scope.cancel()
