"""The management HTTP server on port 0 with a fake app: every route, auth, bad requests, limits, timeouts."""

from __future__ import annotations

from urllib.parse import quote

import h11
import pytest
import trio

from tests.unit.test_mgmt_support import SCRIPT, StartServer, http, raw_exchange, read_response, starter


@pytest.fixture
def start(nursery: trio.Nursery) -> StartServer:
    return starter(nursery)


async def test_health_ok_and_degraded(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        result = await http(run.port, "GET", "/health")
        assert result.status == 200
        assert result.json() == {"status": "ok", "uptime": 12.5}
        assert result.headers["cache-control"] == "no-store"
        run.app.status = "starting"
        result = await http(run.port, "GET", "/health")
    assert result.status == 503
    assert result.json()["status"] == "starting"


async def test_metrics_are_read_at_scrape_time(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        first = await http(run.port, "GET", "/metrics")
        run.app.invites = 9
        second = await http(run.port, "GET", "/metrics")
    assert first.status == 200
    assert first.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = first.body.decode()
    assert "# TYPE trioproxy_requests_total counter" in text
    assert "# HELP trioproxy_requests_total Requests received, by method." in text
    assert 'trioproxy_requests_total{method="INVITE"} 5.0' in text
    assert 'trioproxy_requests_total{method="BYE"} 2.0' in text
    assert "# TYPE trioproxy_transactions gauge" in text
    assert "trioproxy_transactions 7.0" in text
    assert 'trioproxy_build_info{version="' in text
    assert "process_open_fds " in text  # the process collector (Linux /proc)
    assert 'trioproxy_requests_total{method="INVITE"} 9.0' in second.body.decode()


async def test_stats_script_and_reload(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        stats = await http(run.port, "POST", "/reload")
        assert stats.status == 200
        assert stats.json() == {"ok": True, "file": SCRIPT["path"], "line": None, "error": None}
        run.app.reload_error = (12, "attempt to call a nil value")
        failed = await http(run.port, "POST", "/reload")
        assert failed.status == 422
        assert failed.json() == {"ok": False, "file": SCRIPT["path"], "line": 12, "error": "attempt to call a nil value"}
        script = await http(run.port, "GET", "/script")
        assert script.json() == {**SCRIPT, "last_reload": {"ok": True, "reloads": 2}}
        stats = await http(run.port, "GET", "/stats")
    assert stats.json() == {"transactions": {"server": 3, "client": 4}, "udp": {"dropped": 0}}


async def test_registrations_list_one_and_page(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        everything = await http(run.port, "GET", "/registrations")
        page = await http(run.port, "GET", "/registrations?offset=1&limit=1")
        one = await http(run.port, "GET", "/registrations?aor=" + quote("sip:alice@example.com", safe=""))
    assert everything.json()["total"] == 2
    assert page.json() == {"total": 2, "offset": 1, "aors": {"sip:bob@example.com": ["sip:bob@192.0.2.3:5060"]}}
    assert one.json()["bindings"] == [{"contact": "sip:alice@192.0.2.1:5060"}, {"contact": "sip:alice@192.0.2.2:5060"}]
    assert run.app.page_calls == [(None, 0, 100), (None, 1, 1), ("sip:alice@example.com", 0, 100)]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/registrations?limit=0", "limit must be between 1 and 1000"),
        ("/registrations?limit=1001", "limit must be between 1 and 1000"),
        ("/registrations?offset=-1", "offset must be between"),
        ("/registrations?offset=ten", "offset must be an integer"),
        ("/registrations?page=2", "unknown query parameter 'page'"),
        ("/registrations?aor=a&aor=b", "given twice"),
    ],
)
async def test_registrations_bad_queries(start: StartServer, target: str, message: str) -> None:
    run = await start()
    with trio.fail_after(10):
        result = await http(run.port, "GET", target)
    assert result.status == 400
    assert message in result.json()["error"]
    assert run.app.page_calls == []


async def test_unregister_one_contact_then_all(start: StartServer) -> None:
    run = await start()
    aor = quote("sip:alice@example.com", safe="")
    contact = quote("sip:alice@192.0.2.1:5060", safe="")
    with trio.fail_after(10):
        one = await http(run.port, "DELETE", f"/registrations?aor={aor}&contact={contact}")
        assert (one.status, one.json()) == (200, {"removed": 1})
        assert run.app.bindings["sip:alice@example.com"] == ["sip:alice@192.0.2.2:5060"]
        rest = await http(run.port, "DELETE", f"/registrations?aor={aor}")
        assert (rest.status, rest.json()) == (200, {"removed": 1})
        none = await http(run.port, "DELETE", f"/registrations?aor={aor}")
        assert (none.status, none.json()) == (404, {"removed": 0})
        missing = await http(run.port, "DELETE", "/registrations")
    assert missing.status == 400
    assert missing.json() == {"error": "aor is required"}


async def test_trace_switch_and_read(start: StartServer) -> None:
    run = await start()
    call_id = "a84b4c76e66710@pc33.example.com/x y"
    with trio.fail_after(10):
        on = await http(run.port, "POST", "/trace?" + "call_id=" + quote(call_id, safe="") + "&on=1")
        assert on.json() == {"call_ids": [call_id], "users": []}
        user = await http(run.port, "POST", "/trace?user=alice")
        assert user.json() == {"call_ids": [call_id], "users": ["alice"]}
        unknown = await http(run.port, "GET", "/trace/" + quote(call_id, safe=""))
        assert unknown.status == 404
        run.app.traces.capture(call_id, {"direction": "in", "message": "INVITE sip:bob@example.com SIP/2.0"})
        known = await http(run.port, "GET", "/trace/" + quote(call_id, safe=""))
        assert known.status == 200
        assert known.json()["call_id"] == call_id
        assert known.json()["messages"][0]["direction"] == "in"
        off = await http(run.port, "POST", "/trace?user=alice&on=0")
    assert off.json() == {"call_ids": [call_id], "users": []}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/trace", "give exactly one of call_id and user"),
        ("/trace?call_id=x&user=y", "give exactly one of call_id and user"),
        ("/trace?call_id=x&on=maybe", "on must be 1 or 0"),
        ("/trace?call_id=x&verbose=1", "unknown query parameter 'verbose'"),
    ],
)
async def test_trace_bad_queries(start: StartServer, target: str, message: str) -> None:
    run = await start()
    with trio.fail_after(10):
        result = await http(run.port, "POST", target)
    assert result.status == 400
    assert message in result.json()["error"]
    assert run.app.traces.snapshot() == {"call_ids": [], "users": []}


async def test_unknown_path_and_wrong_method(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        missing = await http(run.port, "GET", "/nope")
        get_reload = await http(run.port, "GET", "/reload")
        put_regs = await http(run.port, "PUT", "/registrations")
        get_trace = await http(run.port, "GET", "/trace")
        empty_trace = await http(run.port, "GET", "/trace/")
    assert missing.status == 404
    assert missing.json() == {"error": "no such resource: /nope"}
    assert (get_reload.status, get_reload.headers["allow"]) == (405, "POST")
    assert (put_regs.status, put_regs.headers["allow"]) == (405, "DELETE, GET")
    assert (get_trace.status, get_trace.headers["allow"]) == (405, "POST")
    assert empty_trace.status == 400
    assert run.app.reloads == 0


async def test_app_exception_is_a_500_and_the_server_goes_on(start: StartServer) -> None:
    run = await start()
    run.app.fail_stats = True
    with trio.fail_after(10):
        failed = await http(run.port, "GET", "/stats")
        health = await http(run.port, "GET", "/health")
    assert failed.status == 500
    assert failed.json() == {"error": "internal error (see the proxy's log)"}
    assert health.status == 200


async def test_bearer_token(start: StartServer) -> None:
    run = await start(token="s3cret")
    with trio.fail_after(10):
        none = await http(run.port, "GET", "/health")
        wrong = await http(run.port, "GET", "/health", headers=[("Authorization", "Bearer s3cre")])
        basic = await http(run.port, "GET", "/health", headers=[("Authorization", "Basic czNjcmV0")])
        right = await http(run.port, "POST", "/reload", headers=[("Authorization", "Bearer s3cret")])
    for refused in (none, wrong, basic):
        assert refused.status == 401
        assert refused.headers["www-authenticate"] == 'Bearer realm="trioproxy"'
        assert refused.json() == {"error": "a bearer token is required"}
    assert right.status == 200
    assert run.app.reloads == 1


async def test_keep_alive_serves_several_requests_on_one_connection(start: StartServer) -> None:
    run = await start(token="t")
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", run.port)
        conn = h11.Connection(h11.CLIENT)
        first = await http(run.port, "GET", "/health", stream=stream, conn=conn)
        conn.start_next_cycle()
        second = await http(run.port, "GET", "/stats", stream=stream, conn=conn, headers=[("Authorization", "Bearer t")])
        await stream.aclose()
    assert first.status == 401
    assert second.status == 200
    assert run.server.statistics()["requests"] == 2


async def test_garbage_is_a_400_and_closes(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        reply = await raw_exchange(run.port, b"HELLO THERE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in reply.lower()


async def test_oversized_head_is_a_431(start: StartServer) -> None:
    run = await start(max_head=1024)
    with trio.fail_after(10):
        reply = await raw_exchange(run.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_oversized_body_is_a_413(start: StartServer) -> None:
    run = await start(max_body=100)
    with trio.fail_after(10):
        declared = await http(run.port, "POST", "/reload", body=b"x" * 101)
        chunked = await raw_exchange(
            run.port,
            b"POST /reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"40\r\n" + b"y" * 64 + b"\r\n" + b"40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n",
        )
        small = await http(run.port, "POST", "/reload", body=b"x" * 100)
    assert declared.status == 413
    assert declared.headers["connection"] == "close"
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert small.status == 200
    assert run.app.reloads == 1


async def test_expect_100_continue(start: StartServer) -> None:
    run = await start()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", run.port)
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", "x"), ("Content-Length", "4"), ("Expect", "100-continue")]
        await stream.send_all(conn.send(h11.Request(method="POST", target="/reload", headers=headers)) or b"")
        event = conn.next_event()
        while event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
            event = conn.next_event()
        assert isinstance(event, h11.InformationalResponse)
        assert event.status_code == 100
        await stream.send_all((conn.send(h11.Data(data=b"body")) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        result = await read_response(stream, conn)
        await stream.aclose()
    assert result.status == 200


async def test_slow_client_does_not_block_others_and_times_out(start: StartServer) -> None:
    run = await start(timeout=1.0)
    with trio.fail_after(15):
        slow = await trio.open_tcp_stream("127.0.0.1", run.port)
        await slow.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        for _ in range(3):
            fast = await http(run.port, "GET", "/health")
            assert fast.status == 200
        received = b""
        while chunk := await slow.receive_some(4096):
            received += chunk
        await slow.aclose()
    assert received.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_connection_is_closed(start: StartServer) -> None:
    run = await start(timeout=0.5)
    with trio.fail_after(15):
        stream = await trio.open_tcp_stream("127.0.0.1", run.port)
        conn = h11.Connection(h11.CLIENT)
        result = await http(run.port, "GET", "/health", stream=stream, conn=conn)
        leftover = await stream.receive_some(4096)  # nothing more is sent: the server just closes
        await stream.aclose()
    assert result.status == 200
    assert leftover == b""


async def test_connections_beyond_the_limit_are_closed(start: StartServer) -> None:
    run = await start(max_connections=1)
    with trio.fail_after(10):
        holder = await trio.open_tcp_stream("127.0.0.1", run.port)
        # The server's counter is the only sign its handler has started; poll it (bounded by fail_after).
        while run.server.connections < 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
        extra = await raw_exchange(run.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra == b""
        assert run.server.statistics() == {"connections": 1, "requests": 0, "refused": 1}
        await holder.aclose()
        while run.server.connections > 0:  # noqa: ASYNC110
            await trio.sleep(0.01)
        result = await http(run.port, "GET", "/health")
    assert result.status == 200
