"""``trioproxy ctl`` and the stdlib client against a real management server (port 0, a fake app)."""

from __future__ import annotations

import argparse
import io
import json
import socket
from collections.abc import Sequence

import pytest
import trio

from tests.unit.test_mgmt_support import SCRIPT, StartServer, starter
from trioproxy.mgmt import MgmtClientError, add_ctl_arguments, ctl_main, parse_mgmt_address, request


@pytest.fixture
def start(nursery: trio.Nursery) -> StartServer:
    return starter(nursery)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trioproxy ctl")
    add_ctl_arguments(parser)
    return parser.parse_args(list(argv))


async def ctl(port: int, *argv: str) -> tuple[int, str, str]:
    """Run ctl_main in a thread (it blocks) against 127.0.0.1:port; returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    args = parse(["--mgmt", f"127.0.0.1:{port}", *argv])
    with trio.fail_after(20):
        code = await trio.to_thread.run_sync(ctl_main, args, out, err)
    return code, out.getvalue(), err.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_client_decodes_json_and_keeps_text(start: StartServer) -> None:
    run = await start(token="tok")
    with trio.fail_after(20):
        status, body = await trio.to_thread.run_sync(lambda: request("127.0.0.1", run.port, "GET", "/stats", token="tok"))
        assert (status, body["transactions"]["client"]) == (200, 4)
        status, text = await trio.to_thread.run_sync(lambda: request("127.0.0.1", run.port, "GET", "/metrics", "tok"))
        assert status == 200 and 'trioproxy_requests_total{method="INVITE"} 5.0' in text
        status, body = await trio.to_thread.run_sync(lambda: request("127.0.0.1", run.port, "POST", "/reload"))
    assert (status, body) == (401, {"error": "a bearer token is required"})


async def test_client_error_when_nothing_listens() -> None:
    port = closed_port()
    with trio.fail_after(20), pytest.raises(MgmtClientError, match=f"127.0.0.1:{port}"):
        await trio.to_thread.run_sync(lambda: request("127.0.0.1", port, "GET", "/health", timeout=2))


async def test_health_stats_script_human_and_json(start: StartServer) -> None:
    run = await start()
    code, out, _ = await ctl(run.port, "health")
    assert (code, out) == (0, "status: ok\nuptime: 12.5\n")
    code, out, _ = await ctl(run.port, "stats")
    assert code == 0
    assert out == "transactions:\n  server: 3\n  client: 4\nudp:\n  dropped: 0\n"
    code, out, _ = await ctl(run.port, "--json", "script")
    assert code == 0
    assert json.loads(out) == {**SCRIPT, "last_reload": {"ok": True, "reloads": 0}}
    code, out, _ = await ctl(run.port, "metrics")
    assert code == 0 and "# TYPE trioproxy_transactions gauge" in out


async def test_unhealthy_is_exit_1(start: StartServer) -> None:
    run = await start()
    run.app.status = "stopping"
    code, out, err = await ctl(run.port, "health")
    assert code == 1
    assert out.startswith("status: stopping\n")
    assert "503" in err


async def test_reload_ok_and_refused(start: StartServer) -> None:
    run = await start()
    code, out, _ = await ctl(run.port, "reload")
    assert (code, out) == (0, f"reloaded {SCRIPT['path']}\n")
    run.app.reload_error = (7, "'end' expected")
    code, out, err = await ctl(run.port, "reload")
    assert code == 1
    assert out == f"reload failed: {SCRIPT['path']}:7: 'end' expected (the old script keeps running)\n"
    assert "422" in err
    assert run.app.reloads == 2


async def test_registrations_and_unregister(start: StartServer) -> None:
    run = await start()
    code, out, _ = await ctl(run.port, "registrations", "--limit", "1")
    assert code == 0
    assert out == "total: 2\noffset: 0\naors:\n  sip:alice@example.com:\n    - sip:alice@192.0.2.1:5060\n    - sip:alice@192.0.2.2:5060\n"
    code, out, _ = await ctl(run.port, "registrations", "sip:bob@example.com")
    assert (code, out) == (0, "aor: sip:bob@example.com\nbindings:\n  - contact: sip:bob@192.0.2.3:5060\n")
    code, out, _ = await ctl(run.port, "unregister", "sip:alice@example.com", "--contact", "sip:alice@192.0.2.2:5060")
    assert (code, out) == (0, "removed: 1\n")
    code, out, err = await ctl(run.port, "unregister", "sip:carol@example.com")
    assert (code, out) == (1, "")
    assert "404" in err
    assert run.app.page_calls == [(None, 0, 1), ("sip:bob@example.com", 0, 100)]
    assert run.app.bindings["sip:alice@example.com"] == ["sip:alice@192.0.2.1:5060"]


async def test_trace_on_show_off(start: StartServer) -> None:
    run = await start()
    call_id = "abc@host/with?odd#chars"
    code, out, _ = await ctl(run.port, "trace", call_id, "--on")
    assert (code, out) == (0, f"call_ids:\n  - {call_id}\nusers: (none)\n")
    code, _, err = await ctl(run.port, "trace", call_id)
    assert code == 1 and "404" in err
    run.app.traces.capture(call_id, {"direction": "in", "message": "BYE sip:a@b SIP/2.0\r\nCSeq: 2 BYE\r\n\r\n"})
    code, out, _ = await ctl(run.port, "trace", call_id)
    assert code == 0
    assert out == (
        f"call_id: {call_id}\nmessages:\n  - direction: in\n    message: |\n      BYE sip:a@b SIP/2.0\n      CSeq: 2 BYE\n"
    )
    code, out, _ = await ctl(run.port, "--json", "trace", "--user", "bob", "--on")
    assert json.loads(out) == {"call_ids": [call_id], "users": ["bob"]}
    code, out, _ = await ctl(run.port, "trace", call_id, "--off")
    assert code == 0
    assert run.app.traces.snapshot() == {"call_ids": [], "users": ["bob"]}


@pytest.mark.parametrize(
    "argv",
    [["trace"], ["trace", "--user", "bob"], ["trace", "abc", "--user", "bob", "--on"], ["trace", "--on"]],
)
async def test_trace_argument_errors_are_exit_2(start: StartServer, argv: list[str]) -> None:
    run = await start()
    code, out, err = await ctl(run.port, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("trioproxy ctl: trace")
    assert run.server.requests == 0


async def test_token_from_option_and_environment(start: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    run = await start(token="from-env")
    code, _, err = await ctl(run.port, "stats")
    assert code == 1 and "401" in err
    code, _, _ = await ctl(run.port, "--token", "from-env", "stats")
    assert code == 0
    monkeypatch.setenv("TRIOPROXY_MGMT_TOKEN", "from-env")
    code, _, _ = await ctl(run.port, "stats")
    assert code == 0


async def test_address_from_environment_and_unreachable(start: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    run = await start()
    monkeypatch.setenv("TRIOPROXY_MGMT", f"127.0.0.1:{run.port}")
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(20):
        code = await trio.to_thread.run_sync(ctl_main, parse(["health"]), out, err)
    assert (code, out.getvalue()) == (0, "status: ok\nuptime: 12.5\n")
    code, out_text, err_text = await ctl(closed_port(), "health")
    assert (code, out_text) == (2, "")
    assert "management API at 127.0.0.1:" in err_text


def test_parse_mgmt_address() -> None:
    assert parse_mgmt_address("127.0.0.1:9060") == ("127.0.0.1", 9060)
    assert parse_mgmt_address("[::1]:80") == ("::1", 80)
    assert parse_mgmt_address("localhost:1") == ("localhost", 1)
    for bad in ("127.0.0.1", "::1:80", "host:0", "host:70000", "host:port"):
        with pytest.raises(ValueError):
            parse_mgmt_address(bad)


def test_bad_mgmt_option_is_exit_2() -> None:
    err = io.StringIO()
    assert ctl_main(parse(["--mgmt", "nowhere", "health"]), io.StringIO(), err) == 2
    assert err.getvalue() == "trioproxy ctl: expected HOST:PORT, got 'nowhere'\n"
