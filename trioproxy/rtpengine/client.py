"""The ng client: commands to one of several rtpengine instances over UDP, with weights and failover.

Each command is one datagram with a fresh cookie, sent from a socket of its own (so commands of different
calls never wait for each other), retransmitted every ``timeout`` seconds up to ``retries`` times; only a
reply from the instance's address carrying the same cookie counts. An instance that never answers is
disabled for ``disable_time`` seconds and the command goes to the next one (failover).

A call stays on one instance: the first command of a Call-ID picks among the enabled instances by a hash
of the Call-ID weighted by ``weight`` (as Kamailio's rtpengine module), and the client remembers the choice
(until ``delete`` or, for calls never deleted, a bounded number of newer calls) so that the answer and the
delete reach the instance holding the session.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import socket
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .ng import MAX_DATAGRAM, NgError, decode_message, encode_message, new_cookie

__all__ = ["Instance", "NoInstance", "RtpengineClient", "parse_instance"]

log = logging.getLogger("trioproxy.rtpengine")

_INSTANCE_RE = re.compile(r"udp:(\[[0-9A-Fa-f:.]+\]|[^:\[\]=]+):(\d+)(?:=(\d+))?")
MAX_REMEMBERED_CALLS = 100_000


class NoInstance(Exception):
    """No rtpengine instance answered the command."""


@dataclass(slots=True)
class Instance:
    """One rtpengine ng socket: ``udp:HOST:PORT[=WEIGHT]``; ``disabled_until`` is on trio's clock."""

    host: str
    port: int
    weight: int = 1
    disabled_until: float = -math.inf

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp:{host}:{self.port}={self.weight}"


def parse_instance(text: str) -> Instance:
    """``udp:HOST:PORT`` or ``udp:HOST:PORT=WEIGHT`` (HOST an IP address; ``[v6]``); ``ValueError`` else."""
    m = _INSTANCE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected udp:HOST:PORT[=WEIGHT], got {text!r}")
    host, port, weight = m.group(1).strip("[]"), int(m.group(2)), int(m.group(3) or 1)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    if weight < 1:
        raise ValueError(f"weight must be positive in {text!r}")
    return Instance(host, port, weight)


def _hash(call_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(call_id.encode("utf-8", "surrogateescape"), digest_size=8).digest())


class RtpengineClient:
    """Send ng commands to the instances (see the module docstring)."""

    def __init__(
        self,
        instances: Sequence[Instance],
        *,
        timeout: float = 1.0,
        retries: int = 2,
        disable_time: float = 60.0,
    ) -> None:
        if not instances:
            raise ValueError("no rtpengine instance")
        self.instances = list(instances)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.disable_time = disable_time
        self._calls: OrderedDict[str, Instance] = OrderedDict()

    def _enabled(self, now: float) -> list[Instance]:
        return [i for i in self.instances if i.disabled_until <= now]

    def candidates(self, call_id: str, now: float) -> list[Instance]:
        """Instances to try, in order: the call's own first, then by weighted hash among the enabled."""
        enabled = self._enabled(now) or list(self.instances)  # all disabled: try them anyway
        total = sum(i.weight for i in enabled)
        point = _hash(call_id) % total
        start = 0
        for k, inst in enumerate(enabled):
            if point < inst.weight:
                start = k
                break
            point -= inst.weight
        order = enabled[start:] + enabled[:start]
        known = self._calls.get(call_id)
        if known is not None:
            order = [known, *(i for i in order if i is not known)]
        return order

    def instance_of(self, call_id: str) -> Instance | None:
        """The instance a call's commands go to, once one answered for it."""
        return self._calls.get(call_id)

    async def command(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send ``command`` with ``params`` (``call-id`` among them) and return rtpengine's reply.

        Raises ``NoInstance`` when no instance answered; a reply with ``result: error`` is returned as is.
        """
        body = {"command": command, **params}
        call_id = str(params.get("call-id", ""))
        for inst in self.candidates(call_id, trio.current_time()):
            reply = await self._exchange(inst, body)
            if reply is None:
                inst.disabled_until = trio.current_time() + self.disable_time
                log.warning(
                    "rtpengine %s did not answer %s; disabled for %.0f s", inst, command, self.disable_time
                )
                continue
            if call_id:
                if command == "delete" and reply.get("result") == "ok":
                    self._calls.pop(call_id, None)
                elif command in ("offer", "answer"):
                    self._calls[call_id] = inst
                    self._calls.move_to_end(call_id)
                    while len(self._calls) > MAX_REMEMBERED_CALLS:
                        self._calls.popitem(last=False)
            return reply
        raise NoInstance(f"no rtpengine instance answered {command}")

    async def _exchange(self, inst: Instance, body: dict[str, Any]) -> dict[str, Any] | None:
        cookie = new_cookie()
        data = encode_message(cookie, body)
        family = socket.AF_INET6 if ":" in inst.host else socket.AF_INET
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                await sock.connect((inst.host, inst.port))
            except OSError as exc:
                log.warning("rtpengine %s: %s", inst, exc)
                return None
            for _attempt in range(self.retries + 1):
                try:
                    await sock.send(data)
                except OSError:
                    pass  # an ICMP error from an earlier attempt; wait out this attempt
                with trio.move_on_after(self.timeout):
                    while True:
                        try:
                            raw = await sock.recv(MAX_DATAGRAM)
                        except OSError:  # port unreachable: the instance is not there right now
                            continue
                        try:
                            got, reply = decode_message(raw)
                        except NgError as exc:
                            log.warning("rtpengine %s: unreadable reply: %s", inst, exc)
                            continue
                        if got == cookie:
                            return reply
        return None
