"""The worker supervisor's logic without processes: roles, port plans, restart pauses, the management API's
merging of worker answers, and a worker's Record-Route address (its own port, not the shared one)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from trioproxy.config import ConfigError, ListenSpec, load_config
from trioproxy.mgmt.aggregate import Aggregator, WorkerView, merge_json, merge_metrics
from trioproxy.sip import Address
from trioproxy.transport import Listen, Transports
from trioproxy.workers import Backoff, WorkerRole, plan_ports, resolve_workers, worker_command


def test_workers_default_to_one_per_core_and_the_key_is_checked() -> None:
    assert resolve_workers(0) >= 1 and resolve_workers(3) == 3
    assert load_config(None, {"proxy": {"workers": 4}}).proxy.workers == 4
    with pytest.raises(ConfigError, match=r"proxy\.workers"):
        load_config(None, {"proxy": {"workers": -1}})
    with pytest.raises(ConfigError, match=r"proxy\.worker_port_base"):
        load_config(None, {"proxy": {"worker_port_base": 70000}})


def test_a_role_survives_the_environment() -> None:
    role = WorkerRole(1, ("udp:127.0.0.1:40001", "tcp:127.0.0.1:40003"), "127.0.0.1:0", "sqlite:///x/location.db")
    assert WorkerRole.from_env({"TRIOPROXY_WORKER": role.to_env()}) == role
    assert WorkerRole.from_env({}) is None
    assert role.own_listens() == [ListenSpec("udp", "127.0.0.1", 40001), ListenSpec("tcp", "127.0.0.1", 40003)]


def test_worker_command_runs_this_program_again_with_one_worker() -> None:
    cmd = worker_command(["run", "--workers", "2", "-c", "x.toml"])
    assert cmd[1:] == ["-m", "trioproxy", "run", "--workers", "2", "-c", "x.toml", "--workers", "1"]


def test_port_plan_from_a_base_gives_every_listener_of_every_worker_its_own_port() -> None:
    listens = [ListenSpec("udp", "127.0.0.1", 5060), ListenSpec("tcp", "127.0.0.1", 5060), ListenSpec("tls", "127.0.0.1", 5061)]
    plans = plan_ports(listens, 2, 6000)
    assert [[s.port for s in p] for p in plans] == [[6000, 6002, 6004], [6001, 6003, 6005]]
    assert [s.transport for s in plans[1]] == ["udp", "tcp", "tls"]
    with pytest.raises(ValueError):
        plan_ports(listens, 2, 65534)


def test_port_plan_without_a_base_picks_distinct_free_ports() -> None:
    plans = plan_ports([ListenSpec("udp", "127.0.0.1", 5060)], 3, 0)
    ports = [p[0].port for p in plans]
    assert len(set(ports)) == 3 and all(port > 0 for port in ports)


def test_restart_pauses_double_on_quick_deaths_and_reset_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, stable=30.0)
    assert [backoff.next_pause(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.next_pause(60.0) == 0.5


def test_merge_json_sums_numbers_merges_objects_and_concatenates_lists() -> None:
    merged = merge_json(
        [
            {"proxy": {"requests": {"INVITE": 3}, "draining": False}, "dialogs": [1], "version": "1.0"},
            {"proxy": {"requests": {"INVITE": 4, "BYE": 1}, "draining": False}, "dialogs": [2], "version": "1.0"},
        ]
    )
    assert merged == {"proxy": {"requests": {"INVITE": 7, "BYE": 1}, "draining": False}, "dialogs": [1, 2], "version": "1.0"}
    assert merge_json(["a", "b"]) == ["a", "b"]
    # the location store is shared (every worker counts the same bindings); a lag is the worst worker's
    shared = merge_json([{"registrations": {"aors": 5}, "event_loop_lag_seconds": 0.1}] * 2)
    assert shared == {"registrations": {"aors": 5}, "event_loop_lag_seconds": 0.1}


def test_merge_metrics_sums_each_series() -> None:
    one = (
        "# HELP trioproxy_requests Requests.\n# TYPE trioproxy_requests counter\n"
        'trioproxy_requests_total{method="INVITE"} 3.0\ntrioproxy_requests_total{method="BYE"} 1.0\n'
        "# HELP process_start_time_seconds Start.\n# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds 100.0\n"
        "# HELP trioproxy_registered_aors AORs.\n# TYPE trioproxy_registered_aors gauge\n"
        "trioproxy_registered_aors 7.0\n"
    )
    two = one.replace("} 3.0", "} 5.0").replace("100.0", "90.0")
    text = merge_metrics([one, two]).decode()
    assert 'trioproxy_requests_total{method="INVITE"} 8.0' in text
    assert 'trioproxy_requests_total{method="BYE"} 2.0' in text
    assert "process_start_time_seconds 90.0" in text
    assert "trioproxy_registered_aors 7.0" in text


async def test_the_aggregator_asks_every_worker_and_reports_a_refused_reload() -> None:
    asked: list[tuple[int, str, str]] = []

    async def fetch(view: WorkerView, method: str, target: str) -> tuple[int, Any]:
        asked.append((view.index, method, target))
        if target == "/reload":
            return (200, {"ok": True}) if view.index == 0 else (422, {"ok": False, "error": "line 3"})
        return 200, {"proxy": {"transactions_handled": 10 + view.index}}

    views = [WorkerView(i, 100 + i, True, 0, ("127.0.0.1", 1000 + i)) for i in range(2)]
    agg = Aggregator(lambda: views, fetch)
    stats = await agg.dispatch("GET", "/stats")
    assert stats.status == 200 and b'"transactions_handled":21' in stats.body
    reload = await agg.dispatch("POST", "/reload")
    assert reload.status == 422 and b'"ok":false' in reload.body and b"line 3" in reload.body
    await agg.dispatch("GET", "/registrations?aor=x")  # the store is shared: one worker answers
    assert [a for a in asked if a[2].startswith("/registrations")] == [(0, "GET", "/registrations?aor=x")]
    down = Aggregator(lambda: [WorkerView(0, None, False, 1, None)], fetch)
    assert (await down.dispatch("GET", "/health")).status == 503


async def test_a_worker_records_its_own_port_for_requests_on_the_shared_one() -> None:
    shared = Listen("udp", "127.0.0.1", 0)
    transports = Transports([shared], own=[Listen("udp", "127.0.0.1", 0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(transports.serve)
        own_address, shared_address = transports.listen_addresses()
        assert own_address.port != shared_address.port
        # requests leave from, and Via names, the worker's own port; Record-Route too
        assert transports.local_address("udp", socket.AF_INET) == own_address
        assert transports.record_address(Address("udp", "127.0.0.1", shared_address.port)) == own_address
        assert transports.record_address(own_address) == own_address
        nursery.cancel_scope.cancel()
    single = Transports([shared])
    assert single.record_address(Address("udp", "127.0.0.1", 5060)) == Address("udp", "127.0.0.1", 5060)
