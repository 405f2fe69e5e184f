"""A pytest fixture running a private `redis-server` on a free loopback port for the test session.

Use it from a conftest: `from tests.redis_server import redis_server_url` (a session fixture yielding
`redis://127.0.0.1:PORT/0`). The server keeps nothing on disk (`--save "" --appendonly no`), is waited for
with a bounded loop, and is stopped by its PID when the session ends. Tests isolate themselves with a
key prefix of their own (see `unique_prefix`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

__all__ = ["free_port", "redis_server_url", "start_redis", "stop_redis", "unique_prefix"]

_counter = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix() -> str:
    """A key prefix no other test in this session uses."""
    return f"t{os.getpid()}x{next(_counter)}:"


def start_redis(binary: str = "redis-server", timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free loopback port and wait (at most `timeout` s) until it answers PING."""
    path = shutil.which(binary) or "/usr/bin/redis-server"
    for _attempt in range(3):
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="tp-redis-")
        proc = subprocess.Popen(
            [
                path,
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                workdir,
                "--logfile",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return proc, port
            except OSError:
                pass
            time.sleep(0.02)
        stop_redis(proc)  # the port was taken in between, or the server is slow: try another port
    raise RuntimeError("redis-server did not start")


def stop_redis(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop the server we started, by its PID: SIGTERM, then SIGKILL after `timeout` s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """`redis://127.0.0.1:PORT/0` of a redis-server private to this test session."""
    proc, port = start_redis()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(proc)
