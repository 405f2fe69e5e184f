"""The dialog state machine, the tracker's matching and profiles, and accounting records (sans-IO)."""

from __future__ import annotations

import json
from pathlib import Path

from trioproxy.acc import AccFlags, AccService, JsonLinesWriter, cdr_record
from trioproxy.dialog import Dialog, DialogState, DialogTracker, EndReason
from trioproxy.sip import URI, Request, Response, make_response, parse_message_untrusted


def invite(call_id: str = "c1", tag: str = "ft1", user: str = "alice") -> Request:
    raw = (
        f"INVITE sip:bob@127.0.0.21 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKa1\r\n"
        f"From: <sip:{user}@example.com>;tag={tag}\r\nTo: <sip:bob@example.com>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 10 INVITE\r\nContact: <sip:{user}@127.0.0.2:5060>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message_untrusted(raw)
    assert isinstance(msg, Request)
    return msg


def answer(req: Request, status: int, to_tag: str = "tt1", rr: tuple[str, ...] = ()) -> Response:
    headers = [("Contact", "<sip:bob@127.0.0.21:5070>"), *(("Record-Route", r) for r in rr)]
    return make_response(req, status, to_tag=to_tag, headers=headers)


def in_dialog(
    method: str, d_from: tuple[str, str], d_to: tuple[str, str], cseq: int, call_id: str = "c1"
) -> Request:
    raw = (
        f"{method} sip:x@127.0.0.21 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKb{cseq}\r\n"
        f"From: <{d_from[0]}>;tag={d_from[1]}\r\nTo: <{d_to[0]}>;tag={d_to[1]}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message_untrusted(raw)
    assert isinstance(msg, Request)
    return msg


def state(d: Dialog) -> DialogState:
    return d.state  # read through a call: each assertion sees the state anew


ALICE = ("sip:alice@example.com", "ft1")
BOB = ("sip:bob@example.com", "tt1")


def test_states_from_invite_to_bye() -> None:
    ended: list[Dialog] = []
    t = DialogTracker(profiles_with_value=["caller"])
    t.listeners.append(ended.append)
    inv = invite()
    d = t.manage(inv, 100.0)
    assert d is not None and d.state is DialogState.UNCONFIRMED
    assert t.manage(inv, 100.5) is d  # idempotent
    t.on_response(make_response(inv, 100), 100.1)
    assert d.state is DialogState.UNCONFIRMED  # a 100 has no To tag: no early dialog
    t.on_response(answer(inv, 180), 101.0)
    assert state(d) is DialogState.EARLY and d.early_at == 101.0
    t.on_response(answer(inv, 200), 103.0)
    assert state(d) is DialogState.CONFIRMED and d.answer == 103.0 and d.to_tag == "tt1"
    assert d.callee_contact == "sip:bob@127.0.0.21:5070"
    assert t.on_request(in_dialog("ACK", ALICE, BOB, 10), 103.1) is d and d.acked
    # A BYE from the callee matches with the tags swapped.
    assert t.on_request(in_dialog("BYE", BOB, ALICE, 5), 133.0) is d
    assert state(d) is DialogState.TERMINATED and d.end_reason is EndReason.BYE
    assert d.duration == 30.0 and ended == [d]
    assert t.find(inv) is None and t.counts()["active"] == 0


def test_wrong_tags_do_not_match() -> None:
    t = DialogTracker()
    inv = invite()
    d = t.manage(inv, 0.0)
    assert d is not None
    t.on_response(answer(inv, 200), 1.0)
    assert t.on_request(in_dialog("BYE", ALICE, ("sip:bob@example.com", "other"), 11), 2.0) is None
    assert t.on_request(in_dialog("BYE", ALICE, BOB, 11, call_id="c2"), 2.0) is None
    assert d.state is DialogState.CONFIRMED


def test_final_non_2xx_ends_and_leaves_profiles() -> None:
    t = DialogTracker(profiles_with_value=["caller"], profiles_no_value=["all"])
    inv = invite()
    d = t.manage(inv, 0.0)
    assert d is not None
    assert t.set_profile(d, "caller", "alice") == 1 and t.set_profile(d, "all", "ignored") == 1
    assert t.profile_size("caller", "alice") == 1 and t.profile_size("all", "") == 1
    assert t.is_in_profile(d, "caller", "alice") == 1 and t.is_in_profile(d, "caller", "bob") == -1
    t.on_response(answer(inv, 180), 1.0)
    t.on_response(answer(inv, 487), 2.0)  # what a CANCEL leads to
    assert state(d) is DialogState.TERMINATED and d.status == 487 and d.end_reason is EndReason.FAILED
    assert t.profile_size("caller", "alice") == 0 and t.profile_size("all", "") == 0
    assert d.duration == 0.0
    assert t.set_profile(d, "caller", "alice") == -1  # an ended dialog joins nothing


def test_profiles_undeclared_and_counts_per_value() -> None:
    t = DialogTracker(profiles_with_value=["caller"])
    a1, a2, b1 = (t.manage(invite(f"c{i}", f"t{i}"), 0.0) for i in range(3))
    assert a1 is not None and a2 is not None and b1 is not None
    assert t.profile_size("nope", "") is None and t.set_profile(a1, "nope", "") == -1
    assert t.set_profile(a1, "caller", "") == -1  # a profile with values needs one
    t.set_profile(a1, "caller", "alice")
    t.set_profile(a2, "caller", "alice")
    t.set_profile(b1, "caller", "bob")
    assert (
        t.profile_size("caller", "alice"),
        t.profile_size("caller", "bob"),
        t.profile_size("caller", ""),
    ) == (2, 1, 3)
    assert t.unset_profile(a2, "caller", "alice") == 1 and t.unset_profile(a2, "caller", "alice") == -1
    assert t.profile_size("caller", "alice") == 1


def test_second_2xx_of_a_fork_does_not_move_the_answer() -> None:
    t = DialogTracker()
    inv = invite()
    d = t.manage(inv, 0.0)
    assert d is not None
    t.on_response(answer(inv, 200, "tA"), 5.0)
    t.on_response(answer(inv, 200, "tB"), 6.0)
    assert d.to_tag == "tA" and d.answer == 5.0


def test_lifetime_ends_with_byes_to_both_sides() -> None:
    t = DialogTracker(max_lifetime=60.0)
    inv = invite()
    d = t.manage(inv, 0.0)
    assert d is not None
    rr = ("<sip:p3.example.net;lr>", "<sip:127.0.0.1:5060;lr>", "<sip:p1.example.org;lr>")
    t.on_response(answer(inv, 200, rr=rr), 1.0)
    t.on_request(in_dialog("INFO", BOB, ALICE, 7), 2.0)  # the callee's CSeq is 7 now
    assert t.expire(59.0, None) == []

    def me(uri: URI) -> bool:
        return uri.host == "127.0.0.1"

    [(ended, byes)] = t.expire(60.0, me)
    assert ended is d and d.end_reason is EndReason.LIFETIME and d.duration == 59.0
    sides = dict(byes)
    callee, caller = sides["callee"], sides["caller"]
    assert str(callee.uri) == "sip:bob@127.0.0.21:5070" and str(caller.uri) == "sip:alice@127.0.0.2:5060"
    assert callee.cseq.seq == 11 and callee.from_.tag == "ft1" and callee.to.tag == "tt1"
    assert caller.cseq.seq == 8 and caller.from_.tag == "tt1" and caller.to.tag == "ft1"
    assert callee.get_all("Route") == ["<sip:p3.example.net;lr>"]  # our own entry left out
    assert caller.get_all("Route") == ["<sip:p1.example.org;lr>"]
    assert t.expire(120.0, me) == []  # once


def test_unconfirmed_dialog_expires_without_bye() -> None:
    t = DialogTracker(max_lifetime=10.0)
    d = t.manage(invite(), 0.0)
    assert d is not None
    [(ended, byes)] = t.expire(10.0, None)
    assert ended is d and byes == []


def test_table_limit() -> None:
    t = DialogTracker(max_dialogs=1)
    assert t.manage(invite("c1"), 0.0) is not None
    assert t.manage(invite("c2"), 0.0) is None and t.refused == 1


def test_cdr_and_writer_reopen(tmp_path: Path) -> None:
    t = DialogTracker()
    acc = AccService(file=str(tmp_path / "acc.jsonl"))
    t.listeners.append(lambda d: acc.on_cdr(cdr_record(d)))
    failed = invite("c0")
    t.manage(failed, 990.0)
    t.on_response(answer(failed, 404), 991.0)  # a CDR for the failed call, before the rotation
    inv = invite()
    d = t.manage(inv, 1000.0)
    assert d is not None
    t.on_response(answer(inv, 200), 1002.0)
    (tmp_path / "acc.jsonl").rename(tmp_path / "acc.jsonl.1")  # logrotate
    acc.reopen()
    t.on_request(in_dialog("BYE", ALICE, BOB, 11), 1012.5)
    [old] = [json.loads(x) for x in (tmp_path / "acc.jsonl.1").read_text().splitlines()]
    assert (old["call_id"], old["sip_code"], old["duration"], old["answer_time"]) == ("c0", 404, 0.0, None)
    [line] = (tmp_path / "acc.jsonl").read_text().splitlines()
    cdr = json.loads(line)
    assert cdr["type"] == "cdr" and cdr["sip_code"] == 200 and cdr["duration"] == 10.5
    assert (cdr["start_time"], cdr["answer_time"], cdr["end_time"]) == (1000.0, 1002.0, 1012.5)
    assert cdr["call_id"] == "c1" and cdr["from_tag"] == "ft1" and cdr["to_tag"] == "tt1"


def test_transaction_flags() -> None:
    acc = AccService(flags=AccFlags(log_flag=1, db_flag=-1, log_missed_flag=3, failed_transaction_flag=5))
    made: list[str] = []

    def make(kind: str) -> dict[str, object]:
        made.append(kind)
        return {"type": kind}

    assert acc.on_transaction(1 << 1, "INVITE", 200, make) == 1
    assert acc.on_transaction(1 << 1, "INVITE", 486, make) == 0  # failed: only with failed_transaction_flag
    assert acc.on_transaction((1 << 1) | (1 << 5), "INVITE", 486, make) == 1
    assert acc.on_transaction(1 << 3, "INVITE", 486, make) == 1  # a missed call
    assert acc.on_transaction(1 << 3, "INVITE", 200, make) == 0
    assert acc.on_transaction(0, "INVITE", 200, make) == 0
    assert made == ["tx", "tx", "missed"]


def test_writer_survives_an_unwritable_path(tmp_path: Path) -> None:
    (tmp_path / "dir").write_text("a file where a directory should be")
    w = JsonLinesWriter(tmp_path / "dir" / "acc.jsonl")
    assert w.write({"a": 1}) is False and w.errors == 1
