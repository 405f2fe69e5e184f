"""Dialog profiles shared through Redis (``[dialog] store``), against a real redis-server: counts seen by
every instance, expiry of a dead instance's members, removal when a dialog ends, a Redis outage (-1, the
route goes on), and two route scripts on two proxies limiting one caller to one call between them.

Real time (no mock clock): the store's calls run in worker threads; every wait is bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
import trio

from tests.redis_server import free_port, unique_prefix
from trioproxy.acc.setup import build_dialog_acc
from trioproxy.config import ConfigError, load_config
from trioproxy.dialog import Dialog, DialogTracker, EndReason
from trioproxy.dialog.redis_profiles import RedisProfiles, member_of
from trioproxy.dialog.service import DialogService, use_dialogs
from trioproxy.testing import RouteTest

from .test_dialog import invite
from .test_ksr_dialog import in_dialog

T0 = 1_000_000.0


def dialog(n: int, user: str = "alice", lifetime: float = 60.0) -> Dialog:
    return Dialog.from_invite(n, invite(call_id=f"c{n}", tag=f"t{n}", user=user), T0, lifetime)


@asynccontextmanager
async def profiles(url: str, prefix: str) -> AsyncIterator[RedisProfiles]:
    shared = RedisProfiles.from_url(f"{url}?prefix={prefix}")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shared.run)
            yield shared
            nursery.cancel_scope.cancel()
    finally:
        await shared.close()


async def wait_size(shared: RedisProfiles, profile: str, value: str | None, now: float, want: int) -> int:
    """The profile's size once it is ``want`` (queued writes land within a second on a quiet machine; a busy
    one gets five), else the last one."""
    size = await shared.size(profile, value, now)
    with trio.move_on_after(5):
        while size != want:
            await trio.sleep(0.01)
            size = await shared.size(profile, value, now)
    assert size is not None
    return size


async def test_counts_are_shared_between_instances(redis_server_url: str) -> None:
    prefix = unique_prefix()
    async with profiles(redis_server_url, prefix) as a, profiles(redis_server_url, prefix) as b:
        assert await a.add(dialog(1), "caller", "alice", T0)
        assert await a.add(dialog(2), "caller", "bob", T0)
        assert await b.add(dialog(3), "caller", "alice", T0)
        assert await b.add(dialog(4), "trunk", "", T0)
        assert await a.size("caller", "alice", T0 + 1) == 2
        assert await b.size("caller", "alice", T0 + 1) == 2
        assert await b.size("caller", "bob", T0 + 1) == 1
        assert await a.size("caller", None, T0 + 1) == 3  # all values
        assert await a.size("caller", "carol", T0 + 1) == 0
        assert await a.size("trunk", None, T0 + 1) == 1
        # Adding the same dialog again counts it once.
        assert await a.add(dialog(1), "caller", "alice", T0)
        assert await b.size("caller", "alice", T0 + 1) == 2


async def test_members_of_a_dead_instance_expire(redis_server_url: str) -> None:
    prefix = unique_prefix()
    async with profiles(redis_server_url, prefix) as a:
        assert await a.add(dialog(1, lifetime=30), "caller", "alice", T0)
        assert await a.add(dialog(2, lifetime=90), "caller", "alice", T0)
        client = redis.Redis.from_url(redis_server_url, decode_responses=True)
        key = a.value_key("caller", "alice")
        assert 0 < client.ttl(key) <= 91  # the key lives as long as its latest member
    # "a" is gone without ending its dialogs: another instance counts them until their expiry only.
    async with profiles(redis_server_url, prefix) as b:
        assert await b.size("caller", "alice", T0 + 29) == 2
        assert await b.size("caller", "alice", T0 + 31) == 1
        assert await b.size("caller", None, T0 + 31) == 1
        assert await b.size("caller", "alice", T0 + 91) == 0
        assert client.zcard(key) == 0  # counting dropped the expired members
    client.close()


async def test_a_dialog_leaves_at_once_when_it_ends(redis_server_url: str) -> None:
    prefix = unique_prefix()
    tracker = DialogTracker(profiles_with_value=["caller"], profiles_no_value=["out"])
    async with profiles(redis_server_url, prefix) as a, profiles(redis_server_url, prefix) as b:
        tracker.listeners.append(a.on_end)
        d1 = tracker.manage(invite(call_id="x1", tag="a1"), T0)
        d2 = tracker.manage(invite(call_id="x2", tag="a2"), T0)
        assert d1 is not None and d2 is not None
        for d in (d1, d2):
            assert tracker.set_profile(d, "caller", "alice") == 1
            assert await a.add(d, "caller", "alice", T0)
        assert tracker.set_profile(d1, "out", "") == 1
        assert await a.add(d1, "out", "", T0)
        assert await b.size("out", None, T0) == 1
        tracker.end(d1, T0 + 1, EndReason.DLG_BYE, None)
        assert await wait_size(b, "caller", "alice", T0 + 1, 1) == 1
        assert await wait_size(b, "out", None, T0 + 1, 0) == 0
        # unset_dlg_profile's removal is immediate; the lifetime set later moves the expiry.
        d2.lifetime = 500
        a.retime(d2, T0 + 2)
        assert await wait_size(b, "caller", "alice", T0 + 100, 1) == 1
        assert await a.remove(member_of(d2), [("caller", "alice")])
        assert await b.size("caller", "alice", T0 + 2) == 0
        assert await b.size("caller", None, T0 + 2) == 0


async def test_outage_gives_none_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "trioproxy.dialog")
    shared = RedisProfiles.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    assert not await shared.add(dialog(1), "caller", "alice", T0)
    assert await shared.size("caller", "alice", T0) is None
    assert await shared.size("caller", None, T0) is None
    assert shared.down and shared.errors == 3
    assert len([r for r in caplog.records if "Redis failed" in r.getMessage()]) == 1
    await shared.close()


def test_config_store_key(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[dialog]\nstore = "redis://127.0.0.1:6390/2?prefix=x:"\nprofiles_with_value = ["caller"]\n'
    )
    config = load_config(path)
    dialogs, _acc = build_dialog_acc(config)
    assert isinstance(dialogs.shared, RedisProfiles) and dialogs.shared.prefix == "x:"
    path.write_text('[dialog]\nstore = "mysql://x"\n')
    with pytest.raises(ConfigError, match=r"dialog\.store"):
        load_config(path)
    assert build_dialog_acc(load_config(None))[0].shared is None


SCRIPT = """
function ksr_request_route()
  if KSR.siputils.has_totag() > 0 then
    KSR.tm.t_relay()
    return
  end
  KSR.dialog.dlg_manage()
  if KSR.dialog.get_profile_size("caller", "$fU", "$var(n)") < 0 then
    KSR.sl.sl_send_reply(503, "No Profile Count")
    return
  end
  if KSR.pv.get("$var(n)") > 0 then
    KSR.sl.sl_send_reply(486, "Busy Here")
    return
  end
  KSR.dialog.set_dlg_profile("caller", "$fU")
  KSR.tm.t_relay()
end
"""


def service_for(url: str) -> DialogService:
    tracker = DialogTracker(profiles_with_value=["caller"])
    shared = RedisProfiles.from_url(url)
    tracker.listeners.append(shared.on_end)
    return DialogService(store=tracker, shared=shared)


@asynccontextmanager
async def proxy_with(service: DialogService, script: Path) -> AsyncIterator[RouteTest]:
    with use_dialogs(service):
        async with RouteTest(script) as rt, trio.open_nursery() as nursery:
            service.proxy = rt.proxy
            nursery.start_soon(service.run)
            yield rt
            nursery.cancel_scope.cancel()
    assert service.shared is not None
    await service.shared.close()


async def test_two_proxies_limit_one_caller_together(redis_server_url: str, tmp_path: Path) -> None:
    script = tmp_path / "limit.lua"
    script.write_text(SCRIPT)
    url = f"{redis_server_url}?prefix={unique_prefix()}"
    with trio.fail_after(10):
        two_service = service_for(url)
        async with proxy_with(service_for(url), script) as one, proxy_with(two_service, script) as two:
            first = await one.call("sip:bob@127.0.0.21", from_user="alice")
            leg = await first.branch()
            await leg.reply(200, headers=[("Contact", "<sip:bob@127.0.0.21:5060>")])
            assert (await first.final()).status == 200
            second = await two.call("sip:bob@127.0.0.21", from_user="alice")
            assert (await second.final()).status == 486
            other = await two.call("sip:bob@127.0.0.21", from_user="carol")
            other_leg = await other.branch()
            await other_leg.reply(603)  # a failed call leaves the profile at once
            assert (await other.final()).status == 603
            again = await two.call("sip:bob@127.0.0.21", from_user="carol")  # its own removal counted first
            again_leg = await again.branch()
            await again_leg.reply(486)
            assert (await again.final()).status == 486
            # Alice hangs up through the first proxy: once that removal is in Redis, the second lets her call.
            await one.send(in_dialog(first.raw, "ACK", leg.tag, 1))
            bye = await one.send(in_dialog(first.raw, "BYE", leg.tag, 2))
            await (await bye.branch("BYE")).reply(200)
            assert (await bye.final()).status == 200
            shared_two = two_service.shared
            assert shared_two is not None
            assert await wait_size(shared_two, "caller", "alice", time.time(), 0) == 0
            third = await two.call("sip:bob@127.0.0.21", from_user="alice")
            third_leg = await third.branch()
            await third_leg.reply(200, headers=[("Contact", "<sip:bob@127.0.0.21:5060>")])
            assert (await third.final()).status == 200


async def test_route_gets_minus_one_when_redis_is_down(tmp_path: Path) -> None:
    script = tmp_path / "limit.lua"
    script.write_text(SCRIPT)
    with trio.fail_after(10):
        async with proxy_with(service_for(f"redis://127.0.0.1:{free_port()}/0"), script) as rt:
            call = await rt.call("sip:bob@127.0.0.21", from_user="alice")
            reply = await call.final()
            assert (reply.status, reply.reason) == (503, "No Profile Count")
            again = await rt.call("sip:bob@127.0.0.21", from_user="alice")  # the proxy goes on answering
            assert (await again.final()).status == 503
