"""``trioproxy run --workers N``: a supervisor process and N worker processes sharing the SIP ports.

Theory of operation
-------------------
With ``workers`` > 1 (``[proxy] workers``; 0 means one per core) ``trioproxy run`` becomes a supervisor: it
starts N copies of itself (the same command line with ``--workers 1``; the one-file binary starts its own
executable), each a whole proxy with its own trio loop. A worker learns its role from the environment
(``TRIOPROXY_WORKER``, JSON): its index, its own listeners, where the management API and (for ``memory:``)
the location store go.

- Every worker binds the configured SIP ports with SO_REUSEPORT: the kernel spreads UDP datagrams over the
  workers by the sender's address and port (a UAC's retransmissions, CANCEL and ACK come from the same
  address as its INVITE, so they reach the same worker) and TCP/TLS/WebSocket connections by connection
  (a connection stays in one worker).
- Every worker also binds listeners of its own (``worker_port_base``; 0: free ports chosen by the
  supervisor at start and kept for the worker's whole life, restarts included). Requests leave from them,
  and they are what the worker puts in Via and Record-Route (``Transports.record_address``): responses and
  in-dialog requests of a transaction come back to the worker holding it.
- Registrations: with ``memory:`` the supervisor gives the workers one sqlite file in a private runtime
  directory (removed when it exits); sqlite and redis stores are shared as configured. Dialog profiles are
  shared through ``[dialog] store = "redis://..."``; a dialog's own state stays in the worker that saw its
  INVITE (its Record-Route brings the dialog's requests back there). ``KSR.htable`` tables and pike
  counters are per worker (docs/INTERNALS.md, "Workers").
- A worker that dies is started again after a pause that doubles with each quick death (``Backoff``); one
  that dies before it was ever ready stops the supervisor (a configuration or script error, a port taken).
- SIGHUP and SIGUSR1 are passed on to every worker; SIGTERM/SIGINT are passed on (the workers drain as a
  single process does) and the supervisor exits when they all have; a second signal is passed on too (the
  workers exit at once). A worker drains by itself when the supervisor dies (its stdin, a pipe from the
  supervisor, reaches end of file).
- The supervisor's management API (the configured ``--mgmt``) aggregates the workers'
  (``trioproxy.mgmt.aggregate``); they listen on private loopback ports. sd_notify READY is sent once every
  worker is ready.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from trioproxy import sdnotify
from trioproxy.config import Config, ListenSpec, parse_hostport, parse_listen

__all__ = ["ENV", "Backoff", "WorkerRole", "plan_ports", "resolve_workers", "worker_command"]

log = logging.getLogger("trioproxy.workers")

ENV = "TRIOPROXY_WORKER"
_READY_LINE = "trioproxy route script"
_MGMT_LINE = "trioproxy management API on http://"
_RUNDIR_PREFIX = "trioproxy-workers-"


def resolve_workers(configured: int) -> int:
    """The number of workers: ``configured``, or one per core for 0."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What the supervisor tells one worker (through ``TRIOPROXY_WORKER``)."""

    index: int
    own: tuple[str, ...]  # its own listeners, as "udp:127.0.0.1:40001"
    mgmt: str = ""  # its management API ("" : none)
    location: str | None = None  # the location store URL replacing the configured one

    def own_listens(self) -> list[ListenSpec]:
        return [parse_listen(item) for item in self.own]

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "own": list(self.own), "mgmt": self.mgmt, "location": self.location})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerRole | None:
        text = (os.environ if environ is None else environ).get(ENV)
        if not text:
            return None
        data = json.loads(text)
        return cls(int(data["index"]), tuple(data["own"]), str(data.get("mgmt") or ""), data.get("location"))


def plan_ports(listens: Sequence[ListenSpec], workers: int, base: int) -> list[list[ListenSpec]]:
    """Each worker's own listeners: listener k of worker i on ``base + k * workers + i``, or (base 0) on a
    free port of its kind found now."""
    plans: list[list[ListenSpec]] = []
    for i in range(workers):
        own = []
        for k, spec in enumerate(listens):
            port = base + k * workers + i if base else _free_port(spec)
            if port > 65535:
                raise ValueError(f"worker_port_base {base}: port {port} out of range")
            own.append(ListenSpec(spec.transport, spec.host, port))
        plans.append(own)
    return plans


def _free_port(spec: ListenSpec) -> int:
    kind = socket.SOCK_DGRAM if spec.transport == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((spec.host, 0))
        return int(sock.getsockname()[1])


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of a worker: this program again (the frozen one-file binary, or the interpreter with
    ``-m trioproxy``) with ``argv`` (starting with ``run``) and ``--workers 1``."""
    program = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "trioproxy"]
    return [*program, *argv, "--workers", "1"]


async def watch_supervisor() -> None:
    """In a worker: drain and exit (SIGTERM to itself) when the supervisor is gone.

    The supervisor holds the write end of the worker's stdin and never writes: end of file means it died."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    try:
        while await stream.receive_some(4096):
            pass
    finally:
        await stream.aclose()
    log.warning("the supervisor is gone: draining")
    orphaned.set()
    os.kill(os.getpid(), signal.SIGTERM)


class _Flag:
    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True


orphaned = _Flag()  # set in a worker whose supervisor died: the worker then removes the runtime directory


def remove_orphaned_rundir(role: WorkerRole) -> None:
    """In a worker that outlived its supervisor (killed at once): remove the private runtime directory the
    supervisor could not (the first worker to exit does; the others' open files stay valid)."""
    if not orphaned.value or role.location is None:
        return
    folder = os.path.dirname(role.location.removeprefix("sqlite://").split("?", 1)[0])
    if os.path.basename(folder).startswith(_RUNDIR_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Backoff:
    """Restart pauses: ``initial`` seconds, doubled for each death within ``stable`` seconds of the start
    before it, at most ``maximum``."""

    initial: float = 0.5
    maximum: float = 30.0
    stable: float = 30.0
    quick_deaths: int = 0

    def next_pause(self, lived: float) -> float:
        self.quick_deaths = self.quick_deaths + 1 if lived < self.stable else 1
        return float(min(self.maximum, self.initial * 2.0 ** (self.quick_deaths - 1)))


@dataclass
class Slot:
    """One worker position: its plan and the process running it now."""

    index: int
    own: list[ListenSpec]
    process: trio.Process | None = None
    ready: bool = False
    was_ready: bool = False
    restarts: int = 0
    mgmt: tuple[str, int] | None = None
    script_line: str = ""
    first_ready: trio.Event = field(default_factory=trio.Event)
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None


class StartFailed(Exception):
    """A worker exited before it was ever ready (its own error is in the log)."""

    def __init__(self, index: int, status: int) -> None:
        super().__init__(f"worker {index} exited with status {status} before it was ready")
        self.status = status


class Supervisor:
    """Runs the workers of one ``trioproxy run`` (see the module docstring)."""

    def __init__(
        self, config: Config, argv: Sequence[str], workers: int, announce: Callable[[str], None] = print
    ) -> None:
        self.config = config
        self.argv = list(argv)
        self.announce = announce
        self.stopping = False
        self.slots = [Slot(i, own) for i, own in enumerate(plan_ports(config.listens, workers, config.proxy.worker_port_base))]
        self.rundir = ""
        self._all_exited = trio.Event()

    def _role(self, slot: Slot) -> WorkerRole:
        location = None
        if self.config.location.url.partition(":")[0].lower() in ("", "memory"):
            location = f"sqlite:///{self.rundir}/location.db?synchronous=off"
        mgmt = "127.0.0.1:0" if self.config.mgmt.listen else ""
        return WorkerRole(slot.index, tuple(str(s) for s in slot.own), mgmt, location)

    async def run(self) -> int:
        """Run until the workers have drained after SIGTERM/SIGINT; the exit status."""
        self.rundir = tempfile.mkdtemp(prefix=_RUNDIR_PREFIX)
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1) as signals:
                async with trio.open_nursery() as nursery:
                    for slot in self.slots:
                        nursery.start_soon(self._keep, slot, nursery.cancel_scope)
                    for slot in self.slots:
                        await slot.first_ready.wait()
                    await self._started(nursery)
                    async for signum in signals:
                        self._on_signal(signum, nursery)
        except StartFailed as exc:
            log.error("%s", exc)
            return 1
        except BaseExceptionGroup as group:
            failed = group.subgroup(StartFailed)
            if failed is None:
                raise
            log.error("%s", failed.exceptions[0])
            return 1
        finally:
            self._kill_left()
            shutil.rmtree(self.rundir, ignore_errors=True)
        return 0

    async def _started(self, nursery: trio.Nursery) -> None:
        for spec in self.config.listens:
            self.announce(f"trioproxy listening on {spec}")
        if self.config.mgmt.listen:
            from trioproxy.mgmt import MgmtServer
            from trioproxy.mgmt.aggregate import Aggregator

            host, port = parse_hostport(self.config.mgmt.listen)
            server = MgmtServer(
                None, host, port, token=self.config.mgmt.token or None, endpoints=Aggregator(self.views, self._fetch)
            )
            bound = await nursery.start(server.serve)
            self.announce(f"trioproxy management API on http://{_bracket(host)}:{bound}")
        for slot in self.slots:
            self.announce(f"trioproxy worker {slot.index} pid {slot.pid} on {' '.join(str(s) for s in slot.own)}")
        self.announce(f"trioproxy supervisor pid {os.getpid()}: {len(self.slots)} workers ready")
        # last, as a single process prints it: whoever waits for this line has the others too
        self.announce(self.slots[0].script_line or "trioproxy route script: unknown")
        sdnotify.ready(f"{len(self.slots)} workers")

    def _on_signal(self, signum: int, nursery: trio.Nursery) -> None:
        name = signal.Signals(signum).name
        if signum in (signal.SIGHUP, signal.SIGUSR1):
            if signum == signal.SIGHUP:
                sdnotify.reloading()
            log.info("received %s: passing it on to %d workers", name, len(self.slots))
            self._signal_all(signum)
            if signum == signal.SIGHUP:
                sdnotify.ready()
            return
        again = self.stopping
        self.stopping = True
        log.info("received %s%s: passing it on to the workers", name, " again" if again else "")
        if not again:
            sdnotify.stopping()
            nursery.start_soon(self._end_when_all_exited, nursery.cancel_scope)
        self._signal_all(signal.SIGTERM)
        self._note_exit()

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None and slot.process is not None:
                try:
                    slot.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    async def _end_when_all_exited(self, scope: trio.CancelScope) -> None:
        with trio.move_on_after(self.config.proxy.drain_time + 10.0):
            await self._all_exited.wait()
        scope.cancel()

    def _note_exit(self) -> None:
        if self.stopping and all(slot.pid is None for slot in self.slots):
            self._all_exited.set()

    def _kill_left(self) -> None:
        for slot in self.slots:
            if slot.pid is not None and slot.process is not None:
                log.warning("worker %d (pid %d) still running: killed", slot.index, slot.pid)
                slot.process.kill()

    async def _keep(self, slot: Slot, scope: trio.CancelScope) -> None:
        """Start the worker of ``slot`` and start it again whenever it dies (not while stopping)."""
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env[ENV] = self._role(slot).to_env()
        command = worker_command(self.argv)
        while not self.stopping:
            started = trio.current_time()
            slot.ready, slot.mgmt = False, None
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
            )
            slot.process = process
            log.info("worker %d started: pid %d", slot.index, process.pid)
            async with trio.open_nursery() as reading:
                reading.start_soon(self._read, slot, process)
                status = await process.wait()
            if process.stdin is not None:
                await process.stdin.aclose()
            slot.ready = False
            self._note_exit()
            if self.stopping:
                log.info("worker %d (pid %d) exited with status %d", slot.index, process.pid, status)
                return
            if not slot.was_ready:
                raise StartFailed(slot.index, status)
            pause = slot.backoff.next_pause(trio.current_time() - started)
            slot.restarts += 1
            log.warning(
                "worker %d (pid %d) exited with status %d; starting it again in %.1f s",
                slot.index, process.pid, status, pause,
            )  # fmt: skip
            await trio.sleep(pause)

    async def _read(self, slot: Slot, process: trio.Process) -> None:
        """The worker's announcements on its stdout: its management port, then its readiness."""
        assert process.stdout is not None
        pending = b""
        async for chunk in process.stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(_MGMT_LINE):
                    host, port = parse_hostport(line[len(_MGMT_LINE) :].strip())
                    slot.mgmt = (host, port)
                elif line.startswith(_READY_LINE) and not slot.ready:
                    slot.ready, slot.script_line = True, line
                    if slot.was_ready:
                        self.announce(f"trioproxy worker {slot.index} pid {process.pid} restarted")
                    slot.was_ready = True
                    slot.first_ready.set()
            if len(pending) > 65536:
                pending = b""

    # -- the management API ------------------------------------------------------------------------------

    def views(self) -> list[Any]:
        from trioproxy.mgmt.aggregate import WorkerView

        return [
            WorkerView(s.index, s.pid, s.ready, s.restarts, s.mgmt, tuple(str(x) for x in s.own)) for s in self.slots
        ]

    async def _fetch(self, view: Any, method: str, target: str) -> tuple[int, Any]:
        from trioproxy.mgmt.client import MgmtClientError, request

        host, port = view.mgmt
        token = self.config.mgmt.token or None
        try:
            return await trio.to_thread.run_sync(lambda: request(host, port, method, target, token, timeout=10))
        except MgmtClientError as exc:
            raise OSError(str(exc)) from exc


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_supervisor(config: Config, argv: Sequence[str], workers: int, announce: Callable[[str], None]) -> int:
    """``trioproxy run`` with ``workers`` > 1: the supervisor's whole life; the exit status."""
    return trio.run(Supervisor(config, argv, workers, announce).run)
