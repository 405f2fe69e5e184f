"""KSR.dialog and KSR.acc through the real proxy core on virtual time: concurrent-call limits by profile,
dialogs ended by the lifetime and by dlg_bye (BYEs on the wire), CDRs and flag-driven records."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from trioproxy.acc import AccService, cdr_record, use_acc
from trioproxy.db import connect
from trioproxy.dialog import DialogTracker
from trioproxy.dialog.service import DialogService, use_dialogs
from trioproxy.sip import Address, Request, new_branch
from trioproxy.testing import RouteTest
from trioproxy.testing.network import CALLER

BOB = Address("udp", "127.0.0.21", 5060)
BOB_CONTACT = ("Contact", "<sip:bob@127.0.0.21:5060>")

SCRIPT = """
function ksr_request_route()
  if KSR.siputils.has_totag() > 0 then
    KSR.rr.loose_route()
    KSR.tm.t_relay()
    return
  end
  if KSR.is_INVITE() then
    KSR.dialog.dlg_manage()
    if KSR.dialog.get_profile_size("caller", "$fU", "$var(n)") < 0 then
      KSR.sl.sl_send_reply(500, "no profile")
      return
    end
    if KSR.pv.get("$var(n)") > 0 then
      KSR.sl.sl_send_reply(486, "Busy Here")
      return
    end
    KSR.dialog.set_dlg_profile("caller", "$fU")
    KSR.setflag(1)
    if KSR.pv.get("$rU") == "hangup" then KSR.tm.t_on_reply("bye_now") end
  end
  KSR.rr.record_route()
  KSR.tm.t_relay()
end

function bye_now()
  if tostring(KSR.pv.get("$rs")) == "200" then KSR.dialog.dlg_bye("all") end
end
"""


@asynccontextmanager
async def lab(
    tmp_path: Path, lifetime: float = 3600.0
) -> AsyncIterator[tuple[RouteTest, DialogService, Path]]:
    script = tmp_path / "dlg.lua"
    script.write_text(SCRIPT)
    tracker = DialogTracker(profiles_with_value=["caller"], max_lifetime=lifetime)
    service = DialogService(store=tracker, clock=trio.current_time, check_interval=1.0)
    acc = AccService(file=str(tmp_path / "acc.jsonl"))
    tracker.listeners.append(lambda d: acc.on_cdr(cdr_record(d)))
    with use_dialogs(service), use_acc(acc):
        async with RouteTest(script) as rt, trio.open_nursery() as nursery:
            service.proxy = rt.proxy
            nursery.start_soon(service.run)
            yield rt, service, tmp_path / "acc.jsonl"
            nursery.cancel_scope.cancel()


def in_dialog(invite: bytes, method: str, to_tag: str, cseq: int) -> bytes:
    """The caller's in-dialog request of the dialog ``invite`` started."""
    head, _sep, _body = invite.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    out = [f"{method} sip:bob@127.0.0.21:5060 SIP/2.0"]
    for line in lines[1:]:
        name = line.split(":", 1)[0]
        if name == "Via":
            line = f"Via: SIP/2.0/UDP 127.0.0.2:5060;branch={new_branch()};rport"
        elif name == "To":
            line = f"{line};tag={to_tag}"
        elif name == "CSeq":
            line = f"CSeq: {cseq} {method}"
        elif name == "Content-Length":
            line = "Content-Length: 0"
        out.append(line)
    return ("\r\n".join(out) + "\r\n\r\n").encode()


def cdrs(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "cdr"]


async def test_second_concurrent_call_of_a_user_gets_486(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with lab(tmp_path) as (rt, service, acc_file):
        first = await rt.call("sip:bob@127.0.0.21", from_user="alice")
        leg = await first.branch()
        await leg.reply(180)
        await leg.reply(200, headers=[BOB_CONTACT])
        assert (await first.final()).status == 200
        await trio.sleep(1)
        second = await rt.call("sip:bob@127.0.0.21", from_user="alice")
        assert (await second.final()).status == 486
        other = await rt.call("sip:bob@127.0.0.21", from_user="carol")  # another user is not limited
        leg2 = await other.branch()
        await leg2.reply(486)
        assert (await other.final()).status == 486
        assert service.store.counts()["confirmed"] == 1
        # The first call ends: alice may call again.
        await trio.sleep(10)
        await rt.send(in_dialog(first.raw, "ACK", leg.tag, 1))
        bye = await rt.send(in_dialog(first.raw, "BYE", leg.tag, 2))
        bye_leg = await bye.branch("BYE")
        await bye_leg.reply(200)
        assert (await bye.final()).status == 200
        third = await rt.call("sip:bob@127.0.0.21", from_user="alice")
        leg3 = await third.branch()
        await leg3.reply(603)
        assert (await third.final()).status == 603
        records = cdrs(acc_file)
        by_code = sorted((r["sip_code"], r["duration"]) for r in records)
        assert by_code == [(200, 11.0), (486, 0.0), (486, 0.0), (603, 0.0)]
        assert service.store.counts()["active"] == 0


async def test_lifetime_sends_bye_to_both_sides(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with lab(tmp_path, lifetime=30.0) as (rt, service, acc_file):
        call = await rt.call("sip:bob@127.0.0.21", from_user="alice")
        leg = await call.branch()
        await leg.reply(200, headers=[BOB_CONTACT])
        assert (await call.final()).status == 200
        await rt.send(in_dialog(call.raw, "ACK", leg.tag, 1))
        start = trio.current_time()
        to_bob = await rt.net.wait_for(
            lambda s: isinstance(s.msg, Request) and s.msg.method == "BYE" and s.dest == BOB
        )
        to_alice = await rt.net.wait_for(
            lambda s: isinstance(s.msg, Request) and s.msg.method == "BYE" and s.dest == CALLER
        )
        assert 28.0 <= trio.current_time() - start <= 31.0
        assert isinstance(to_bob.msg, Request) and isinstance(to_alice.msg, Request)
        assert to_bob.msg.to.tag == leg.tag and to_bob.msg.cseq.seq == 2
        assert to_alice.msg.from_.tag == leg.tag and str(to_alice.msg.uri).startswith("sip:alice@127.0.0.2")
        assert not to_bob.msg.get_all("Route")  # the only Record-Route was ours
        [cdr] = cdrs(acc_file)
        assert cdr["end_reason"] == "lifetime" and service.byes_sent == 2


async def test_dlg_bye_from_a_reply_route(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with lab(tmp_path) as (rt, service, acc_file):
        call = await rt.call("sip:hangup@127.0.0.21", from_user="alice")
        leg = await call.branch()
        await leg.reply(200, headers=[BOB_CONTACT])
        bye = await rt.net.wait_for(
            lambda s: isinstance(s.msg, Request) and s.msg.method == "BYE" and s.dest == BOB
        )
        assert isinstance(bye.msg, Request) and bye.msg.call_id == call.call_id
        [cdr] = cdrs(acc_file)
        assert cdr["end_reason"] == "dlg_bye" and cdr["sip_code"] == 200
        assert service.byes_sent == 2 and service.store.counts()["active"] == 0


async def test_flagged_transaction_record(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with lab(tmp_path) as (rt, _service, acc_file):
        call = await rt.call("sip:bob@127.0.0.21", from_user="dave")
        leg = await call.branch()
        await leg.reply(200, headers=[BOB_CONTACT])
        assert (await call.final()).status == 200
        await trio.sleep(1)
        [tx] = [r for r in map(json.loads, acc_file.read_text().splitlines()) if r["type"] == "tx"]
        assert (tx["method"], tx["sip_code"], tx["call_id"]) == ("INVITE", 200, call.call_id)
        assert tx["from_uri"] == "sip:dave@example.com"


ACC_SCRIPT = """
function ksr_request_route()
  KSR.acc.acc_log_request("seen")
  if KSR.acc.acc_db_request("404 Not Here", "acc") < 0 then KSR.sl.sl_send_reply(500, "no acc") return end
  if KSR.acc.acc_db_request("x", "no_such_table") > 0 then KSR.sl.sl_send_reply(500, "bad table") return end
  KSR.setflag(4)
  KSR.sl.sl_send_reply(404, "Not Here")
end
"""


async def test_acc_requests_and_missed_calls_in_the_db(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    script = tmp_path / "acc.lua"
    script.write_text(ACC_SCRIPT)
    url = f"sqlite:///{tmp_path / 'op.db'}"
    acc = AccService(file=str(tmp_path / "acc.jsonl"), db_url=url, extra=(("ua", "$hdr(User-Agent)"),))
    with use_acc(acc):
        async with RouteTest(script) as rt:
            call = await rt.call("sip:nobody@127.0.0.21", headers=[("User-Agent", "phone/1")])
            assert (await call.final()).status == 404
            await trio.sleep(1)
    await acc.flush()
    [logged] = [json.loads(x) for x in (tmp_path / "acc.jsonl").read_text().splitlines()]
    assert (logged["type"], logged["comment"], logged["sip_code"], logged["ua"]) == ("request", "seen", 0, "phone/1")
    db = connect(url)
    rows = db.execute("SELECT type, sip_code, sip_reason, call_id, extra FROM acc").fetchall()
    assert rows == [("request", 404, "Not Here", call.call_id, '{"ua": "phone/1"}')]
    missed = db.execute("SELECT type, sip_code, method FROM missed_calls").fetchall()
    assert missed == [("missed", 404, "INVITE")]  # flag 4 is [acc] db_missed_flag by default
    acc.close()
