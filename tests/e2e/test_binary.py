"""The one-file binary (dist/trioproxy, built by scripts/build-binary) runs with no Python around it.

CI runs scripts/build-binary as a separate step before the tests and sets TRIOPROXY_BINARY_REQUIRED=1, so
a missing binary fails these tests there; elsewhere a missing binary marks them xfail, with the reason.
Each process runs under ``env -i`` (no PYTHONPATH, no virtual environment) from an empty folder, is bounded
by timeouts and is stopped by its PID.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, port_is_bound, stop_process
from trioproxy import __version__
from trioproxy.config import dump_config, load_config

pytestmark = pytest.mark.e2e

BINARY = Path(__file__).resolve().parents[2] / "dist" / "trioproxy"
SIPP = os.environ.get("TRIOPROXY_SIPP", "/usr/bin/sipp")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # the binary unpacks itself before Python starts: slower than `python -m` on a busy host
SIPP_TIMEOUT = 20


def require_binary() -> Path:
    """The binary, or a clear failure (TRIOPROXY_BINARY_REQUIRED=1) or xfail when it was not built."""
    if BINARY.is_file() and os.access(BINARY, os.X_OK):
        return BINARY
    reason = f"{BINARY} is missing: build it with scripts/build-binary (CI runs it before the tests)"
    if os.environ.get("TRIOPROXY_BINARY_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.xfail(reason)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        stop_process(proc)


def run_clean(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["env", "-i", *args], cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT)


def test_version_and_embedded_config(tmp_path: Path) -> None:
    binary = str(require_binary())
    version = run_clean([binary, "--version"], tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"trioproxy {__version__}"), version.stderr
    dump = run_clean([binary, "config", "--dump"], tmp_path)
    assert dump.returncode == 0, dump.stderr
    # The binary embeds the code it was built from: a difference here means it is stale (rebuild it).
    assert dump.stdout == dump_config(load_config()), "dist/trioproxy is older than the source: run scripts/build-binary"


def test_one_sipp_call_through_the_binary(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    binary = str(require_binary())
    proxy_port, uas_port, uac_port = free_port(), free_port(), free_port()
    proxy_out, proxy_err = tmp_path / "proxy.out", tmp_path / "proxy.err"
    with open(proxy_out, "wb") as out, open(proxy_err, "wb") as err:
        proxy = subprocess.Popen(
            ["env", "-i", binary, "run", "--listen", f"udp:{HOST}:{proxy_port}", "--log-level", "info"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
    processes.append(proxy)

    def diagnostics() -> str:
        parts = [f"--- proxy (exit {proxy.poll()})", proxy_out.read_text(errors="replace"), proxy_err.read_text(errors="replace")]
        for path in sorted(tmp_path.glob("*_errors.log")) + sorted(tmp_path.glob("sipp-*.out")):
            parts += [f"--- {path.name}", path.read_text(errors="replace")[-4000:]]
        return "\n".join(parts)

    deadline = time.monotonic() + START_TIMEOUT
    while "trioproxy listening on" not in proxy_out.read_text(errors="replace"):
        assert proxy.poll() is None and time.monotonic() < deadline, f"the binary did not start\n{diagnostics()}"
        time.sleep(0.05)
    assert f"trioproxy listening on udp:{HOST}:{proxy_port}" in proxy_out.read_text()

    common = ["-i", HOST, "-m", "1", "-nostdin", "-timeout", str(SIPP_TIMEOUT), "-timeout_error", "-trace_err"]
    with open(tmp_path / "sipp-uas.out", "wb") as out:
        uas = subprocess.Popen(
            [SIPP, "-sn", "uas", "-p", str(uas_port), *common],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    processes.append(uas)
    deadline = time.monotonic() + START_TIMEOUT
    while not port_is_bound(uas_port, "udp"):
        assert uas.poll() is None and time.monotonic() < deadline, f"SIPp uas did not start\n{diagnostics()}"
        time.sleep(0.02)

    with open(tmp_path / "sipp-uac.out", "wb") as out:
        uac = subprocess.Popen(
            [SIPP, "-sn", "uac", f"{HOST}:{uas_port}", "-rsa", f"{HOST}:{proxy_port}", "-p", str(uac_port), *common],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    processes.append(uac)
    try:
        uac_rc = uac.wait(timeout=SIPP_TIMEOUT + 10)
        uas_rc = uas.wait(timeout=SIPP_TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIPp did not finish in time\n{diagnostics()}")
    assert (uac_rc, uas_rc) == (0, 0), diagnostics()
    assert proxy.poll() is None, diagnostics()
