"""Ports and processes for end-to-end tests and benchmarks on loopback (shared by tests/ and scripts/)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

__all__ = ["HOST", "cpu_seconds", "free_port", "port_is_bound", "rss_kib", "stop_process"]

HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port free for UDP and TCP both at the time of the call."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for UDP and TCP")


def port_is_bound(port: int, transport: str) -> bool:
    """Whether some socket is bound to 127.0.0.1:port (TCP: listening), from /proc/net (no bind race)."""
    table = "/proc/net/udp" if transport == "udp" else "/proc/net/tcp"
    want = f"0100007F:{port:04X}"
    with open(table) as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[1] == want and (transport == "udp" or parts[3] == "0A"):
                return True
    return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process by its PID, then SIGKILL it if it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
