"""The proxies and SIPp peers ``scripts/bench`` starts, each on 127.0.0.1 and stopped by its PID.

``start_proxy`` renders the route script from ``bench/`` (markers ``@MODE@``, ``@UAS1@``, ``@UAS2@``) and
starts trioproxy (``python -m trioproxy run --workers N``, one UDP listener, no management API) or Kamailio in the
foreground (``kamailio -DD -E`` with ``bench/kamailio.cfg``, its own runtime directory and PID file).
``Started.stop`` stops the process tree it recorded: SIGTERM to the main PID, then SIGKILL to whatever
of that tree is left (checked by start time, so a reused PID is never touched).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_measure import process_tree

from trioproxy.testing.processes import HOST, port_is_bound, stop_process

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
KAMAILIO = "/usr/sbin/kamailio"
KAMAILIO_LUA = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/app_lua.so")
PROXIES = ("kamailio", "trioproxy")


def kamailio_available() -> bool:
    """Kamailio and its Lua module (Debian's ``kamailio`` and ``kamailio-lua-modules``) are installed."""
    return (shutil.which("kamailio") is not None or Path(KAMAILIO).exists()) and KAMAILIO_LUA.exists()


def install_kamailio() -> int:
    """``apt-get install kamailio kamailio-lua-modules`` when they are missing (root only); exit status."""
    if kamailio_available():
        print("bench: kamailio and kamailio-lua-modules are installed")
        return 0
    if os.geteuid() != 0:
        print("bench: run as root, or: sudo apt-get install kamailio kamailio-lua-modules", file=sys.stderr)
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "kamailio", "kamailio-lua-modules"],
        check=False, env=env, timeout=900,
    )
    # the package enables a system service; scripts/bench never uses it, it starts its own instances
    return done.returncode


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class Started:
    """A process started here, with the tree it had (PID to start time) when last looked at."""

    name: str
    proc: subprocess.Popen[bytes]
    tree: dict[int, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def remember_tree(self) -> None:
        for pid in process_tree(self.pid):
            start = _start_time(pid)
            if start is not None:
                self.tree[pid] = start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.remember_tree()
        try:
            stop_process(self.proc, timeout=8.0)
        except BaseException:  # interrupted while waiting: take the whole tree down at once
            self._kill_left(list(self.tree))
            raise
        deadline = time.monotonic() + 3.0
        left = [pid for pid, start in self.tree.items() if pid != self.pid and _start_time(pid) == start]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in left if _start_time(pid) == self.tree[pid]]
        self._kill_left(left)  # children the main process did not take down with it

    def _kill_left(self, pids: list[int]) -> None:
        for pid in pids:
            if _start_time(pid) == self.tree.get(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: Started | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{what}: {proc.name} exited with status {proc.proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")


def render(template: Path, target: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    target.write_text(text)
    return target


def start_proxy(
    proxy: str, workdir: Path, port: int, script: str, values: dict[str, str], children: int = 1, shm_mb: int = 256
) -> Started:
    """Start ``proxy`` on udp:127.0.0.1:``port`` routing with ``bench/<script>``; wait until it listens."""
    lua = render(BENCH_DIR / script, workdir / f"{proxy}-{script}", values)
    out = open(workdir / f"{proxy}.log", "ab")
    if proxy == "trioproxy":
        cmd = [sys.executable, "-m", "trioproxy", "run", "--workers", str(children), "--listen", f"udp:{HOST}:{port}"]
        cmd += ["--script", str(lua), "--mgmt", "", "--log-level", "warning"]
    else:
        rundir = workdir / "kamailio-run"
        rundir.mkdir(exist_ok=True)
        cfg = render(
            BENCH_DIR / "kamailio.cfg",
            workdir / "kamailio.cfg",
            {"PORT": str(port), "SCRIPT": str(lua), "CHILDREN": str(children)},
        )
        cmd = [KAMAILIO, "-DD", "-E", "-f", str(cfg), "-P", str(rundir / "kamailio.pid"), "-Y", str(rundir)]
        cmd += ["-m", str(shm_mb), "-M", "8"]
    with out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    started = Started(proxy, proc)
    try:
        wait_for(lambda: port_is_bound(port, "udp"), 30, f"{proxy} listening on {port}", started)
        if proxy == "trioproxy" and children > 1:  # the supervisor says so once every worker is ready
            log = workdir / f"{proxy}.log"
            wait_for(lambda: "workers ready" in log.read_text(errors="replace"), 30, f"{children} workers", started)
        time.sleep(1.0 if proxy == "trioproxy" else 0.3)  # imports and forks settle
        if proc.poll() is not None:
            raise RuntimeError(f"{proxy} exited with status {proc.returncode}")
    except BaseException:
        started.stop()
        raise
    started.remember_tree()
    return started


def start_uas(workdir: Path, scenario: str, port: int) -> Started:
    """A SIPp callee running ``bench/<scenario>`` on udp:127.0.0.1:``port`` (statistics in uas-PORT.csv)."""
    xml = workdir / scenario
    shutil.copyfile(BENCH_DIR / scenario, xml)
    cmd = ["sipp", "-sf", str(xml), "-i", HOST, "-p", str(port), "-t", "u1", "-nostdin", "-timer_resol", "1"]
    cmd += ["-trace_stat", "-stf", str(workdir / f"uas-{port}.csv"), "-fd", "1"]
    with open(workdir / f"uas-{port}.log", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    started = Started(f"sipp {scenario}", proc)
    try:
        wait_for(lambda: port_is_bound(port, "udp"), 20, f"SIPp {scenario} listening on {port}", started)
    except BaseException:
        started.stop()
        raise
    return started
