"""The dispatcher's sans-IO model (list format, states, algorithms), its probe rounds on virtual time, and
the OPTIONS probes as the proxy sends them (on a fake network)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.unit.proxy_harness import reply, running_proxy
from tests.unit.test_mgmt_support import FakeApp
from trioproxy.config import ConfigError, DispatcherSection, load_config
from trioproxy.db.schema import connect
from trioproxy.dispatcher import (
    DS_INACTIVE,
    DS_PROBING,
    Destination,
    Dispatcher,
    DispatcherError,
    DispatcherSets,
    current_dispatcher,
    parse_list,
    parse_state,
)
from trioproxy.dispatcher.prober import Prober
from trioproxy.dispatcher.runtime import DispatcherRuntime
from trioproxy.mgmt.routes import Endpoints
from trioproxy.proxy import StaticRouter
from trioproxy.sip import Address, Request
from trioproxy.transaction import Timers

LIST = """
# set dest flags priority attrs
1 sip:10.0.0.1:5060 0 5 weight=25;duid=a
1 sip:10.0.0.2:5070 0 10 weight=75;duid=b   # higher priority: first
2 sip:gw.example.com;transport=tcp
3 sip:10.0.0.9 4
"""


def sets(text: str = LIST) -> DispatcherSets:
    return DispatcherSets.build(parse_list(text))


def uris(dests: list[Destination]) -> list[str]:
    return [d.uri for d in dests]


def test_list_columns_attrs_and_priority_order() -> None:
    s = sets()
    assert sorted(s.sets) == [1, 2, 3]
    one = s.sets[1]
    assert uris(one) == ["sip:10.0.0.2:5070", "sip:10.0.0.1:5060"]
    assert (one[0].priority, one[0].weight, one[0].duid) == (10, 75, "b")
    assert s.sets[2][0].host == "gw.example.com" and s.sets[2][0].port == 5060
    assert not s.sets[3][0].active  # flags 4: disabled
    assert s.sets[3][0].state_text() == "DX"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("1 sip:a\nx sip:b", 2),
        ("1", 1),
        ("1 http://a", 1),
        ("1 sip:a 0 0 weight=x", 1),
        ("1 sip:a 0 0 weight=101", 1),
    ],
)
def test_bad_lists_name_the_line(text: str, line: int) -> None:
    with pytest.raises(DispatcherError) as info:
        parse_list(text)
    assert info.value.line == line


def test_state_letters() -> None:
    assert parse_state("ip") == (DS_INACTIVE | DS_PROBING, 2 | 4)
    assert parse_state("a") == (0, DS_INACTIVE | 2 | 4)
    assert parse_state("x") is None and parse_state("") is None


def test_hash_algorithms_are_stable_and_spread() -> None:
    s = sets("1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.3")
    first = {cid: s.select(1, 0, call_id=cid)[0].uri for cid in (f"call-{i}" for i in range(60))}
    again = {cid: s.select(1, 0, call_id=cid)[0].uri for cid in first}
    assert first == again
    assert len(set(first.values())) == 3
    by_from = s.select(1, 1, from_uri="alice@example.com:")
    assert uris(s.select(1, 1, from_uri="alice@example.com:")) == uris(by_from)
    assert len(by_from) == 3  # then the failover order: every other active destination


def test_round_robin_is_shared_and_skips_inactive() -> None:
    s = sets("1 sip:10.0.0.1\n1 sip:10.0.0.2\n1 sip:10.0.0.3")
    picks = [s.select(1, 4)[0].uri for _ in range(6)]
    assert picks == ["sip:10.0.0.1", "sip:10.0.0.2", "sip:10.0.0.3"] * 2
    s.sets[1][1].state |= DS_INACTIVE
    picks = [s.select(1, 4)[0].uri for _ in range(4)]
    assert picks == ["sip:10.0.0.1", "sip:10.0.0.3"] * 2
    assert uris(s.select(1, 4)) == ["sip:10.0.0.1", "sip:10.0.0.3"]  # no inactive one to fail over to


def test_priority_and_weight() -> None:
    s = sets()
    assert s.select(1, 8)[0].uri == "sip:10.0.0.2:5070"
    counts = Counter(s.select(1, 9)[0].uri for _ in range(100))
    assert counts == {"sip:10.0.0.2:5070": 75, "sip:10.0.0.1:5060": 25}
    s.sets[1][0].state |= DS_INACTIVE
    assert {s.select(1, 9)[0].uri for _ in range(5)} == {"sip:10.0.0.1:5060"}
    assert s.select(1, 8)[0].uri == "sip:10.0.0.1:5060"


def test_no_set_or_none_active() -> None:
    s = sets()
    assert s.select(7, 4) == []
    assert s.select(3, 4) == []  # only a disabled destination


def test_from_list_ip_and_port() -> None:
    s = sets("1 sip:10.0.0.1:5070\n2 sip:10.0.0.2:0")
    assert s.from_list("10.0.0.1", 5070, 1) is not None
    assert s.from_list("10.0.0.1", 5060, 1) is None
    assert s.from_list("10.0.0.1", 5070, 2) is None
    assert s.from_list("10.0.0.1", 5070, -1) is not None
    assert s.from_list("10.0.0.2", 4242, -1) is not None  # port 0 in the list: any port


def test_reload_keeps_states_and_refuses_a_bad_list(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.1\n1 sip:10.0.0.2\n")
    ds = Dispatcher.from_file(path)
    ds.probe_result(ds.sets.sets[1][0], 408)
    path.write_text("1 sip:10.0.0.1\n1 sip:10.0.0.3\n")
    assert ds.reload()["ok"]
    assert [d.active for d in ds.sets.sets[1]] == [False, True]
    path.write_text("1 nonsense:\n")
    result = ds.reload()
    assert not result["ok"] and "line 1" in result["error"]
    assert uris(ds.sets.sets[1]) == ["sip:10.0.0.1", "sip:10.0.0.3"]


async def test_probe_rounds_mark_down_and_up_on_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    ds = Dispatcher(
        sets("1 sip:10.0.0.1\n1 sip:10.0.0.2\n"), ping_interval=2.0, ping_timeout=1.0, probing_mode=1
    )
    up = {"sip:10.0.0.1": True, "sip:10.0.0.2": True}
    sent: list[tuple[float, str]] = []

    async def probe(dest: Destination) -> int:
        sent.append((trio.current_time(), dest.uri))
        if up[dest.uri]:
            return 200
        await trio.sleep_forever()  # no answer: the round's ping_timeout ends it
        raise AssertionError

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ds.run, probe)
        await trio.sleep(0.5)
        up["sip:10.0.0.2"] = False
        down_at = trio.current_time()
        for _ in range(100):  # 10 virtual seconds at most
            if not ds.sets.sets[1][1].active:
                break
            await trio.sleep(0.1)
        detected = trio.current_time() - down_at
        assert ds.sets.select(1, 4)[0].uri == ds.sets.select(1, 4)[0].uri == "sip:10.0.0.1"
        up["sip:10.0.0.2"] = True
        for _ in range(100):
            if ds.sets.sets[1][1].active:
                break
            await trio.sleep(0.1)
        assert ds.sets.sets[1][1].active
        nursery.cancel_scope.cancel()
    assert detected <= ds.ping_interval + ds.ping_timeout + 0.2
    assert ds.sets.sets[1][1].last_probe_status == 200 and ds.probes_failed >= 1
    rounds = sorted({round(t - t0, 1) for t, _ in sent})
    assert rounds[:3] == [0.0, 2.0, 4.0]


async def test_mode_0_probes_only_probing_or_inactive(autojump_clock: trio.abc.Clock) -> None:
    ds = Dispatcher(sets("1 sip:10.0.0.1\n1 sip:10.0.0.2 8\n1 sip:10.0.0.3 1\n"), ping_interval=1.0)
    seen: list[str] = []

    async def probe(dest: Destination) -> int:
        seen.append(dest.uri)
        return 404

    await ds.probe_round(probe)
    assert sorted(seen) == ["sip:10.0.0.2", "sip:10.0.0.3"]
    ds.ping_reply_codes = (404,)
    await ds.probe_round(probe)
    assert all(d.active for d in ds.sets.sets[1])


async def test_prober_sends_options_through_the_proxy(autojump_clock: trio.abc.Clock) -> None:
    server = Address("udp", "127.0.0.31", 5080)
    dest = parse_list("1 sip:127.0.0.31:5080")[0]
    async with running_proxy(StaticRouter(), timers=Timers(t1=0.5)) as (proxy, net):
        prober = Prober(proxy, "sip:lb@example.com")
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def go() -> None:
                result.append(await prober.probe(dest))

            nursery.start_soon(go)
            first = await net.request_to(server, "OPTIONS")
            again = await net.wait_for(lambda s: s.dest == server and s.msg is not first, within=1.0)
            assert isinstance(again.msg, Request) and again.msg.method == "OPTIONS"  # retransmitted (Timer E)
            await net.inject(reply(first, 200), server)
        assert result == [200]
        assert str(first.uri) == "sip:127.0.0.31:5080"
        assert first.from_.uri.user == "lb" and first.from_.tag
        assert first.cseq.method == "OPTIONS" and first.top_via.host == "127.0.0.1"
        # no answer at all: Timer F ends the transaction with 408
        assert await prober.probe(dest) == 408
        net.unreachable.add(server)
        assert await prober.probe(dest) == 503


def test_db_table_source_and_reload(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'operator.db'}"
    db = connect(url)
    db.execute(
        "INSERT INTO dispatcher (setid, destination, priority, attrs) VALUES (2, 'sip:10.0.0.5', 1, 'duid=x')"
    )
    runtime = DispatcherRuntime.start(DispatcherSection(), url)
    try:
        assert runtime is not None and current_dispatcher() is runtime.dispatcher
        ds = runtime.dispatcher
        assert (
            ds.source == "db" and uris(ds.sets.sets[2]) == ["sip:10.0.0.5"] and ds.sets.sets[2][0].duid == "x"
        )
        db.execute("INSERT INTO dispatcher (setid, destination, priority) VALUES (2, 'sip:10.0.0.6', 5)")
        assert ds.reload()["destinations"] == 2
        assert uris(ds.sets.sets[2]) == ["sip:10.0.0.6", "sip:10.0.0.5"]
        db.execute("INSERT INTO dispatcher (setid, destination) VALUES (2, 'bogus')")
        result = ds.reload()
        assert not result["ok"] and "dispatcher row 3" in result["error"]
    finally:
        db.close()
        if runtime is not None:
            runtime.close()
    assert current_dispatcher() is None
    assert DispatcherRuntime.start(DispatcherSection(), "") is None


def test_config_checks_the_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.list"
    bad.write_text("1 sip:10.0.0.1\n1 nope\n")
    with pytest.raises(ConfigError, match="line 2"):
        load_config(None, {"dispatcher": {"list_file": str(bad)}})
    with pytest.raises(ConfigError, match="probing_mode"):
        load_config(None, {"dispatcher": {"probing_mode": 3}})
    good = tmp_path / "good.list"
    good.write_text("1 sip:10.0.0.1\n")
    assert load_config(None, {"dispatcher": {"list_file": str(good)}}).dispatcher.list_file == str(good)


class _DispatcherApp(FakeApp):
    def __init__(self, ds: Dispatcher) -> None:
        super().__init__()
        self.ds = ds

    def dispatcher_list(self) -> dict[str, Any]:
        return self.ds.snapshot()

    def dispatcher_reload(self) -> dict[str, Any]:
        return self.ds.reload()


async def test_management_endpoints(tmp_path: Path) -> None:
    assert (await Endpoints(FakeApp()).dispatch("GET", "/dispatcher")).status == 404  # no dispatcher
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.1 8\n")
    endpoints = Endpoints(_DispatcherApp(Dispatcher.from_file(path, ping_interval=5)))
    shown = await endpoints.dispatch("GET", "/dispatcher")
    assert shown.status == 200
    assert json.loads(shown.body)["sets"]["1"][0]["state"] == "AP"
    path.write_text("1 sip:10.0.0.1\n1 sip:10.0.0.2\n")
    done = await endpoints.dispatch("POST", "/dispatcher/reload")
    assert (done.status, json.loads(done.body)["destinations"]) == (200, 2)
    path.write_text("oops\n")
    refused = await endpoints.dispatch("POST", "/dispatcher/reload")
    assert refused.status == 422 and "line 1" in json.loads(refused.body)["error"]
    assert (await endpoints.dispatch("GET", "/dispatcher/reload")).status == 405
