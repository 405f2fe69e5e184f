"""Plain UDP peers for end-to-end tests: a socket bound to a chosen loopback source, and what it receives."""

from __future__ import annotations

import socket
import time


def udp_from(source: str) -> socket.socket:
    """A UDP socket bound to ``source`` (a 127.0.0.0/8 address) on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    return sock


def answers(sock: socket.socket, seconds: float) -> list[bytes]:
    """Every datagram ``sock`` receives within ``seconds``."""
    out: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            break
    return out


def finals(sock: socket.socket, seconds: float) -> list[str]:
    """First lines of the final responses ``sock`` receives within ``seconds``."""
    lines = (data.split(b"\r\n", 1)[0].decode() for data in answers(sock, seconds))
    return [line for line in lines if not line.startswith("SIP/2.0 1")]
