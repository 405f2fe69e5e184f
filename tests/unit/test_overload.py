"""Overload shedding: the sans-IO detector on given times, and the proxy core on virtual time (what peers get)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.unit.proxy_harness import CALLER, FakeTransport, invite, reply
from trioproxy.config import ConfigError, load_config
from trioproxy.flood.overload import OverloadConfig, OverloadDetector
from trioproxy.proxy import Proxy, StaticRouter, Target
from trioproxy.sip import Address, Request, new_branch, parse_uri_untrusted

A = Address("udp", "127.0.0.11", 5060)
STEP = 0.01  # seconds between two samples in the detector tests


def feed(det: OverloadDetector, lag: float, start: float, seconds: float) -> float:
    """Samples of ``lag`` every STEP + lag seconds (a late loop samples less often); returns the end time."""
    now = start
    while now < start + seconds:
        now += STEP + lag
        det.sample(lag, now)
    return now


def shed_share(det: OverloadDetector, n: int = 1000) -> float:
    return sum(det.shed() for _ in range(n)) / n


# -- the detector -----------------------------------------------------------------------------------------


def test_a_quick_loop_never_sheds() -> None:
    det = OverloadDetector()
    feed(det, 0.001, 0.0, 30.0)
    assert det.level == 0.0 and not det.overloaded
    assert shed_share(det) == 0.0 and det.stats.shed == 0


def test_one_late_sample_is_not_overload() -> None:
    det = OverloadDetector()
    now = feed(det, 0.001, 0.0, 1.0)
    det.sample(0.4, now + 0.41)  # a collection pause or a compile: one sample
    feed(det, 0.001, now + 0.41, 1.0)
    assert det.stats.episodes == 0 and shed_share(det) == 0.0
    assert det.stats.peak_lag == pytest.approx(0.4)


def test_sustained_lag_raises_shedding_until_all_new_requests_are_refused() -> None:
    det = OverloadDetector()  # lag_high 0.1
    now = feed(det, 0.12, 0.0, 0.6)
    first = det.level
    assert 0.0 < first < 1.0 and det.overloaded and det.stats.episodes == 1
    assert shed_share(det) == pytest.approx(first, abs=0.002)
    feed(det, 0.12, now, 1.0)
    assert det.level == 1.0 and shed_share(det) == 1.0


def test_a_growing_queue_raises_the_level_at_once_a_draining_one_lowers_it_at_once() -> None:
    det = OverloadDetector(OverloadConfig(lag_high=0.1, lag_low=0.03, rise=8.0, proportional=4.0))
    now = feed(det, 0.12, 0.0, 0.6)
    level = det.level
    assert 0.0 < level < 0.5
    det.sample(0.2, now + 0.01)  # the queue's delay grew: the proportional part answers in one sample
    assert det.level - level == pytest.approx(4.0 * (0.2 - 0.12) + 0.01, abs=0.002)  # (+ fall * dt at least)
    level = det.level
    det.sample(0.05, now + 0.02)  # draining under lag_high: lower at once
    assert level - det.level == pytest.approx(4.0 * (0.2 - 0.05) + 8.0 * 0.05 * 0.01, abs=0.002)


def test_under_the_high_threshold_the_level_eases_off_slowly_then_fast_when_the_lag_is_gone() -> None:
    det = OverloadDetector(OverloadConfig(lag_high=0.1, lag_low=0.03, rise=2.0, proportional=0.0, fall=0.5))
    now = feed(det, 0.2, 0.0, 3.0)
    level = det.level
    assert level == 1.0
    now = feed(det, 0.05, now, 0.4)  # between the thresholds: rise * (lag - lag_high) per second
    between = level - det.level
    assert between == pytest.approx(2.0 * 0.05 * 0.4, abs=0.01)
    level = det.level
    now = feed(det, 0.001, now, 0.2)  # under lag_low: at least fall per second
    assert level - det.level == pytest.approx(0.5 * 0.2, abs=0.02)
    feed(det, 0.001, now, 3.0)
    assert det.level == 0.0 and shed_share(det) == 0.0  # recovered by itself
    assert det.stats.episodes == 1


def simulate(
    det: OverloadDetector, offered: float, seconds: float, start: float, backlog: float
) -> tuple[float, float, float, float]:
    """A server of CAPACITY new calls per second (each brings 1/CAPACITY s of work) offered ``offered`` calls
    per second, the detector deciding for each and sampling the queue's delay every 10 ms: the admitted rate,
    the share of time the server was busy, the highest delay after the first second, the end backlog."""
    step, now, arrivals = 0.01, start, 0.0
    admitted = busy = 0.0
    worst = 0.0
    while now < start + seconds - 1e-9:
        now += step
        arrivals += offered * step
        while arrivals >= 1.0:
            arrivals -= 1.0
            if not det.shed():
                admitted += 1
                backlog += 1.0 / CAPACITY
        served = min(backlog, step)
        busy += served
        backlog -= served
        det.sample(backlog, now)
        if now - start > 1.0:
            worst = max(worst, backlog)
    return admitted / seconds, busy / seconds, worst, backlog


CAPACITY = 400.0


def test_twice_the_capacity_is_shed_to_full_goodput_with_a_short_queue_and_recovers() -> None:
    det = OverloadDetector()
    rate, busy, worst, backlog = simulate(det, 2 * CAPACITY, 20.0, 0.0, 0.0)
    assert 0.9 * CAPACITY <= rate <= 1.02 * CAPACITY  # goodput held near the capacity
    assert busy >= 0.9  # the server is never left idle for long
    assert worst < 0.3  # admitted calls wait well under T1 (0.5 s): no retransmissions
    assert 0.35 <= det.level <= 0.65
    # The load falls to half the capacity: shedding stops by itself and everything is admitted.
    rate, busy, worst, backlog = simulate(det, 0.5 * CAPACITY, 5.0, 20.0, backlog)
    assert det.level == 0.0 and rate == pytest.approx(0.5 * CAPACITY, rel=0.1)


def test_ten_times_the_capacity_is_held_too() -> None:
    det = OverloadDetector()
    rate, busy, worst, _ = simulate(det, 10 * CAPACITY, 10.0, 0.0, 0.0)
    assert 0.85 * CAPACITY <= rate <= 1.05 * CAPACITY and busy >= 0.85 and worst < 0.4


def test_half_level_refuses_every_other_request() -> None:
    det = OverloadDetector()
    det.level = 0.5
    assert [det.shed() for _ in range(6)] == [False, True, False, True, False, True]
    assert det.stats.shed == 3


def test_a_long_gap_counts_as_max_gap() -> None:
    config = OverloadConfig(lag_high=0.05, lag_low=0.01, onset=1, rise=1.0, proportional=0.0, max_gap=0.2)
    det = OverloadDetector(config)
    det.sample(0.1, 0.0)
    det.sample(0.1, 5.0)  # the loop stood still for 5 s: a bounded step (fall per second of max_gap)
    assert det.level == pytest.approx(0.2)


def test_bad_detector_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        OverloadConfig(lag_high=0.01, lag_low=0.02)
    with pytest.raises(ValueError):
        OverloadConfig(onset=0)


def test_overload_configuration(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    assert load_config(None).overload.enabled
    path.write_text('[overload]\nlag_high = 0.2\nlag_low = 0.05\naction = "drop"\nretry_after = 9\n')
    ov = load_config(path).overload
    assert (ov.lag_high, ov.lag_low, ov.action, ov.retry_after) == (0.2, 0.05, "drop", 9)
    for bad in ('[overload]\naction = "reject"\n', "[overload]\nlag_high = 0.01\nlag_low = 0.02\n",
                "[overload]\nprobe_interval = 0\n", "[overload]\nlag = 1\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(path)


# -- the proxy core ---------------------------------------------------------------------------------------


@asynccontextmanager
async def overloaded_proxy(action: str = "503") -> AsyncIterator[tuple[Proxy, FakeTransport]]:
    """A proxy whose lag is always at the threshold (lag_high = 0): it sheds every new request soon."""
    net = FakeTransport()

    async def locate(uri: Any) -> list[Address]:
        return [Address("udp", uri.host, uri.port or 5060)]

    router = StaticRouter(stages=[[Target(parse_uri_untrusted("sip:bob@127.0.0.11"))]])
    proxy = Proxy(net, router, locate=locate)
    proxy.overload = OverloadDetector(OverloadConfig(lag_high=0.0, lag_low=0.0))
    proxy.overload_action = action
    proxy.overload_retry_after = 4
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        await trio.sleep(1.5)  # the probe's samples bring the level to 1
        assert proxy.overload.level == 1.0
        yield proxy, net
        nursery.cancel_scope.cancel()


async def test_new_invite_gets_503_with_retry_after_and_in_dialog_bye_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with overloaded_proxy() as (proxy, net):
        branch = new_branch()
        await net.inject(invite(call_id="new", branch=branch), CALLER)
        busy = await net.wait_for(lambda s: getattr(s.msg, "status", None) == 503, within=5)
        assert busy.msg.call_id == "new" and busy.msg.get("Retry-After") == "4"
        # Its retransmission is absorbed by its transaction: the same 503 again, no second decision.
        start = len(net.sent)
        await net.inject(invite(call_id="new", branch=branch), CALLER)
        again = await net.wait_for(lambda s: getattr(s.msg, "status", None) == 503, start=start, within=5)
        assert again.msg.call_id == "new"
        assert proxy.overload is not None and proxy.overload.stats.shed == 1
        # A REGISTER is a new out-of-dialog request too.
        start = len(net.sent)
        await net.inject(invite("sip:127.0.0.1", method="REGISTER", call_id="reg"), CALLER)
        reg = await net.wait_for(lambda s: getattr(s.msg, "status", None) == 503, start=start, within=5)
        assert reg.msg.call_id == "reg"
        # In-dialog: the BYE of a call in progress is forwarded.
        start = len(net.sent)
        await net.inject(invite(call_id="call", method="BYE", to_tag="t1"), CALLER)
        bye = await net.wait_for(lambda s: getattr(s.msg, "method", None) == "BYE", start=start, within=5)
        assert isinstance(bye.msg, Request) and bye.msg.call_id == "call"  # forwarded downstream
        assert net.requests_to(A, "INVITE") == [] and net.requests_to(A, "REGISTER") == []
        assert proxy.stats.transactions_handled == 1  # only the BYE got a request task


async def test_drop_action_answers_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with overloaded_proxy("drop") as (proxy, net):
        await net.inject(invite(call_id="new"), CALLER)
        await trio.sleep(5)
        assert net.sent == [] and proxy.overload is not None and proxy.overload.stats.shed == 1


async def test_an_invite_started_before_overload_goes_on_and_its_cancel_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeTransport()

    async def locate(uri: Any) -> list[Address]:
        return [Address("udp", uri.host, uri.port or 5060)]

    router = StaticRouter(stages=[[Target(parse_uri_untrusted("sip:bob@127.0.0.11"))]])
    proxy = Proxy(net, router, locate=locate)
    detector = OverloadDetector(OverloadConfig(lag_high=0.0, lag_low=0.0))
    proxy.overload = detector
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        branch = new_branch()
        await net.inject(invite(call_id="early", branch=branch), CALLER)  # level 0: admitted
        forwarded = await net.request_to(A)
        await net.inject(reply(forwarded, 180), A)
        await net.response_up(180)
        await trio.sleep(1.5)
        assert detector.level == 1.0
        start = len(net.sent)
        await net.inject(invite(call_id="early", branch=branch, method="CANCEL"), CALLER)
        await net.wait_for(lambda s: getattr(s.msg, "method", None) == "CANCEL", start=start, within=5)
        assert [r.call_id for r in net.requests_to(A, "INVITE")] == ["early"]
        # The caller gets 200 for its CANCEL (16.10); nothing of the call was refused.
        assert [r.status for r in net.responses_up() if r.cseq.method == "CANCEL"] == [200]
        assert not net.responses_up(503)
        assert detector.stats.shed == 0
        nursery.cancel_scope.cancel()
