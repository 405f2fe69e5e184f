"""The end-to-end harness: a real trioproxy process between real SIPp peers, all on 127.0.0.1.

Theory of operation
-------------------
A test asks the ``lab`` fixture for a proxy (``lab.proxy(...)``: a ``trioproxy run`` subprocess listening on
one free port for UDP and TCP both, started once its "listening" lines are printed), for callees
(``lab.uas(scenario)``: a SIPp process in the background, ready once its port shows in /proc/net) and runs
a caller to its end (``lab.uac(scenario, ...)``: a SIPp process with a bounded wait). SIPp's exit code is the
verdict of a scenario (0: every call went as the scenario says; a missing message fails it by timeout), and
each SIPp logs the messages it sent and received (``-trace_msg``), which ``SippRun.received()`` parses for
the counts a test asserts.

Every process is stopped by its PID when the test ends, and every wait is bounded. When a check fails, the
assertion message carries the proxy's log and each SIPp's error log and message trace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trioproxy.testing.processes import free_port, port_is_bound, stop_process

__all__ = [
    "CORE",
    "SCENARIOS",
    "SIPP",
    "Lab",
    "ProxyRun",
    "SipMessage",
    "SippRun",
    "free_port",
    "lab",
    "parse_message_log",
    "port_is_bound",
    "stop_process",
]

SCENARIOS = Path(__file__).parent / "scenarios"
SIPP = os.environ.get("TRIOPROXY_SIPP", "sipp")
HOST = "127.0.0.1"
START_TIMEOUT = 15.0  # seconds for a process to come up (a loaded 2-core machine is slow to import)
SIPP_TIMEOUT = 20  # SIPp's own global timeout (-timeout, with -timeout_error), seconds
WAIT_MARGIN = 10.0  # our bound on a SIPp process beyond its own timeout

# ``lab.proxy(**CORE, ...)``: the proxy core with its static router, no route script and no registrar (a
# Request-URI naming the proxy is then forwarded or forked like any other).
CORE: dict[str, Any] = {"script": "none", "settings": {"registrar": {"enabled": False}}}


# -- ports and processes --------------------------------------------------------------------------------











def _tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return text if len(text) <= limit else "...\n" + text[-limit:]


# -- SIPp message traces ----------------------------------------------------------------------------------


@dataclass
class SipMessage:
    """One message of a SIPp trace: its direction, first line and headers (names lowercased)."""

    direction: str  # "received" or "sent"
    transport: str  # "UDP" or "TCP", as SIPp logs it
    first_line: str
    headers: list[tuple[str, str]]

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        """The request's method, or for a response the method of its CSeq."""
        if self.is_request:
            return self.first_line.split(" ", 1)[0]
        return self.header("cseq").split()[-1]

    @property
    def status(self) -> int | None:
        return int(self.first_line.split()[1]) if not self.is_request else None

    def header(self, name: str) -> str:
        """The first value of a header ("" when absent)."""
        for key, value in self.headers:
            if key == name.lower():
                return value
        return ""

    @property
    def top_branch(self) -> str:
        match = re.search(r"branch=([^;,\s]+)", self.header("via"))
        return match.group(1) if match else ""

    @property
    def to_tag(self) -> str:
        match = re.search(r";\s*tag=([^;,\s>]+)", self.header("to"))
        return match.group(1) if match else ""


_SEPARATOR = re.compile(r"^-{20,} .*$", re.MULTILINE)


def parse_message_log(text: str) -> list[SipMessage]:
    """Parse a SIPp ``-trace_msg`` file into its messages, in order."""
    out: list[SipMessage] = []
    for chunk in _SEPARATOR.split(text):
        lines = chunk.strip("\r\n").splitlines()
        if not lines:
            continue
        kind = lines[0]
        if "message received" in kind:
            direction = "received"
        elif "message sent" in kind:
            direction = "sent"
        else:
            continue
        body = [ln.rstrip("\r") for ln in lines[1:]]
        while body and not body[0].strip():
            body.pop(0)
        if not body:
            continue
        headers: list[tuple[str, str]] = []
        for ln in body[1:]:
            if not ln.strip():
                break
            name, _, value = ln.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        out.append(SipMessage(direction, kind.split()[0], body[0].strip(), headers))
    return out


# -- processes of a test ----------------------------------------------------------------------------------


@dataclass
class ProxyRun:
    port: int
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_path: Path | None = None  # what it announced: listeners, management API, workers

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log(self) -> str:
        """The proxy's whole log (it runs at DEBUG here, so a tail would lose what tests look for)."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        return _tail(self.stderr_path)

    def transaction_lines(self, method: str | None = None) -> list[str]:
        """The proxy's one-line-per-transaction log entries (``METHOD URI branches=N status=S T ms``)."""
        # Logged at DEBUG (the proxy runs with --log-level debug here); the whole log, not its tail.
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            text = ""
        out = []
        for line in text.splitlines():
            _, sep, entry = line.partition(" trioproxy.proxy: ")
            if sep and " status=" in entry and (method is None or entry.startswith(f"{method} ")):
                out.append(entry)
        return out


@dataclass
class SippRun:
    name: str
    scenario: str
    port: int
    transport: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    returncode: int | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def message_file(self) -> Path:
        return self.workdir / f"{self.name}.msg"

    @property
    def error_file(self) -> Path:
        return self.workdir / f"{self.name}.err"

    @property
    def output_file(self) -> Path:
        return self.workdir / f"{self.name}.out"

    def wait(self, timeout: float) -> int:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            self.returncode = self.proc.returncode
            raise
        return self.returncode

    def messages(self) -> list[SipMessage]:
        try:
            return parse_message_log(self.message_file.read_text(errors="replace"))
        except OSError:
            return []

    def received(self, method: str | None = None, status: int | None = None) -> list[SipMessage]:
        """Messages this SIPp received: requests of ``method``, or responses with ``status``."""
        out = []
        for m in self.messages():
            if m.direction != "received":
                continue
            if method is not None and not (m.is_request and m.method == method):
                continue
            if status is not None and m.status != status:
                continue
            out.append(m)
        return out

    def diagnostics(self) -> str:
        return (
            f"--- SIPp {self.name} ({self.scenario}, port {self.port}, exit {self.returncode})\n"
            f"errors:\n{_tail(self.error_file, 3000)}\n"
            f"output:\n{_tail(self.output_file, 1500)}\n"
            f"messages:\n{_tail(self.message_file, 6000)}\n"
        )


@dataclass
class Lab:
    """The processes of one test, stopped at its end."""

    workdir: Path
    proxies: list[ProxyRun] = field(default_factory=list)
    sipps: list[SippRun] = field(default_factory=list)

    # -- the proxy --

    def proxy(
        self,
        *,
        fork: Sequence[Sequence[str]] = (),
        script: str | None = None,
        settings: Mapping[str, Mapping[str, str | int | float | bool]] | None = None,
        timer_t1: float | None = None,
        timer_c: float | None = None,
        extra_args: Sequence[str] = (),
        config_extra: str = "",
        workers: int = 1,
    ) -> ProxyRun:
        """Start ``trioproxy run`` on a free port (UDP and TCP) and wait for its listening lines.

        ``script`` goes to the configuration's ``routing.script`` (``"none"``: the proxy core with its static
        router, which ``fork`` needs; None: the proxy's default, the embedded Lua script). ``settings`` adds
        configuration keys by section, e.g. ``{"registrar": {"enabled": False}}``. ``workers``: worker
        processes (``--workers``; 1, the default here, runs the single process every other test expects).
        """
        port = free_port()
        n = len(self.proxies)
        config = self.workdir / f"proxy{n}.toml"
        lines = ["[proxy]", f'listen = ["udp:{HOST}:{port}", "tcp:{HOST}:{port}"]']
        if fork:
            stages = ", ".join("[" + ", ".join(f'"{u}"' for u in stage) + "]" for stage in fork)
            lines.append(f"fork = [{stages}]")
        sections: dict[str, dict[str, str | int | float | bool]] = {}
        if script is not None:
            sections["routing"] = {"script": script}
        for section, values in (settings or {}).items():
            sections.setdefault(section, {}).update(values)
        # Keys of [proxy] (e.g. domains) join the table opened above: TOML allows a table only once.
        lines += [f"{key} = {json.dumps(value)}" for key, value in sections.pop("proxy", {}).items()]
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        config.write_text("\n".join(lines) + "\n" + config_extra)  # config_extra: TOML ([[arrays]] of tables)
        args = [sys.executable, "-m", "trioproxy", "run", "-c", str(config)]
        args += ["--listen", f"udp:{HOST}:{port}", "--listen", f"tcp:{HOST}:{port}", "--log-level", "debug"]
        # The management API on a port of its own choosing: the default 127.0.0.1:9060 may be taken.
        args += ["--mgmt", f"{HOST}:0"]
        args += ["--workers", str(workers)]
        if timer_t1 is not None:
            args += ["--timer-t1", str(timer_t1)]
        if timer_c is not None:
            args += ["--timer-c", str(timer_c)]
        args += list(extra_args)
        stderr_path = self.workdir / f"proxy{n}.err"
        stdout_path = self.workdir / f"proxy{n}.out"
        with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.workdir)
        run = ProxyRun(port, proc, stderr_path, stdout_path)
        self.proxies.append(run)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if stdout_path.read_text().count("trioproxy listening on") >= 2:
                return run
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"the proxy did not start (exit {proc.poll()}):\n{run.log_tail()}")

    # -- SIPp --

    def _sipp(
        self,
        scenario: str,
        *,
        name: str,
        port: int,
        transport: str,
        remote: str | None,
        rsa: str | None,
        calls: int,
        keys: dict[str, str],
        extra_args: Sequence[str],
        subst: dict[str, str] | None = None,
    ) -> SippRun:
        path = SCENARIOS / scenario
        assert path.exists(), path
        if subst:
            # Places where SIPp takes no variable (a recv's response code) hold @NAME@ placeholders.
            text = path.read_text()
            for placeholder, value in subst.items():
                text = text.replace(f"@{placeholder}@", value)
            path = self.workdir / f"{name}-{scenario}"
            path.write_text(text)
        args = [SIPP, "-sf", str(path)]
        if remote is not None:
            args.append(remote)
        args += ["-i", HOST, "-p", str(port), "-t", "u1" if transport == "udp" else "t1"]
        if rsa is not None:
            args += ["-rsa", rsa]
        args += ["-m", str(calls), "-nostdin", "-timeout", str(SIPP_TIMEOUT), "-timeout_error"]
        args += ["-trace_msg", "-message_file", f"{name}.msg", "-trace_err", "-error_file", f"{name}.err"]
        for key, value in keys.items():
            args += ["-key", key, value]
        args += list(extra_args)
        with open(self.workdir / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )
        run = SippRun(name, scenario, port, transport, self.workdir, proc)
        self.sipps.append(run)
        return run

    def uas(
        self,
        scenario: str,
        *,
        transport: str = "udp",
        keys: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        subst: dict[str, str] | None = None,
    ) -> SippRun:
        """Start a SIPp callee in the background and wait until its port is bound."""
        name = name or f"uas{len(self.sipps)}"
        port = free_port()
        run = self._sipp(
            scenario,
            name=name,
            port=port,
            transport=transport,
            remote=None,
            rsa=None,
            calls=1,
            keys=keys or {},
            extra_args=extra_args,
            subst=subst,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if port_is_bound(port, transport):
                return run
            if run.proc.poll() is not None:
                break
            time.sleep(0.02)
        run.returncode = run.proc.poll()
        pytest.fail(f"SIPp {name} did not start\n{run.diagnostics()}")

    def uac(
        self,
        scenario: str,
        remote: str,
        *,
        rsa: str | None = None,
        transport: str = "udp",
        calls: int = 1,
        keys: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        name: str = "uac",
        subst: dict[str, str] | None = None,
        wait: bool = True,
    ) -> SippRun:
        """Run a SIPp caller to ``remote`` (sending to ``rsa`` when given) until it exits (bounded).

        With ``wait=False`` the caller runs in the background: wait for it with ``SippRun.wait``.
        """
        run = self._sipp(
            scenario,
            name=name,
            port=free_port(),
            transport=transport,
            remote=remote,
            rsa=rsa,
            calls=calls,
            keys=keys or {},
            extra_args=extra_args,
            subst=subst,
        )
        if not wait:
            return run
        try:
            run.wait(SIPP_TIMEOUT + WAIT_MARGIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIPp {name} did not exit in time\n{self.diagnostics()}")
        return run

    # -- verdicts --

    def diagnostics(self) -> str:
        parts = [f"--- proxy {p.address} (exit {p.proc.poll()})\n{p.log_tail()}" for p in self.proxies]
        parts += [s.diagnostics() for s in self.sipps]
        return "\n".join(parts)

    def expect_success(self, *runs: SippRun) -> None:
        """Wait (bounded) for each SIPp to exit and assert each ran its scenario to the end (exit code 0)."""
        for run in runs:
            if run.returncode is None:
                try:
                    run.wait(SIPP_TIMEOUT + WAIT_MARGIN)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"SIPp {run.name} did not exit in time\n{self.diagnostics()}")
        failed = [r.name for r in runs if r.returncode != 0]
        assert not failed, f"SIPp {failed} failed\n{self.diagnostics()}"

    def close(self) -> None:
        for run in self.sipps:
            stop_process(run.proc)
        for proxy in self.proxies:
            stop_process(proxy.proc)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A proxy and SIPp peers for one test; every process is stopped by PID at the end."""
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()
