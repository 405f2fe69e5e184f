"""The ``uacreg`` table (migration 5), ``trioproxy trunk``, the registry's reaction to table changes,
unregistration (Expires: 0), and ``GET /trunks`` / ``trioproxy ctl trunks``."""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from trioproxy.auth import build_challenge, parse_credentials
from trioproxy.cli import main
from trioproxy.db import connect, migrate, version_of
from trioproxy.mgmt.ctl import _human, _plan
from trioproxy.mgmt.routes import Endpoints
from trioproxy.proxy import BranchEvent
from trioproxy.sip import Address, Request, Response, make_response
from trioproxy.uac import Registration, RegState, Trunk
from trioproxy.uac.client import TrunkRegistry
from trioproxy.uac.sender import TrunkClient
from trioproxy.uac.table import TrunkRow, add_trunk, list_trunks

TRUNK = Trunk("pbx1", "office", "example.com", "pbx", "trunk.example", realm="trunk.example",
              auth_password="secret", auth_proxy="sip:127.0.0.1:5099", expires=60)  # fmt: skip


def _answer(req: Request, status: int, *headers: tuple[str, str]) -> Response:
    req.insert_top("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx")
    resp = make_response(req, status, "X", to_tag="t1")
    for name, value in headers:
        resp.append(name, value)
    return resp


def test_v4_file_upgrades_to_uacreg(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'op.db'}"
    db = sqlite3.connect(tmp_path / "op.db", isolation_level=None)
    assert migrate(db, 4) == 4
    db.execute("INSERT INTO dispatcher (setid, destination) VALUES (1, 'sip:10.0.0.1')")
    db.execute("INSERT INTO subscriber (username, domain, ha1_md5) VALUES ('a', 'b', 'c')")
    db.close()
    db = connect(url)  # the proxy and the CLI upgrade on open
    assert version_of(db) == 5
    assert db.execute("SELECT destination FROM dispatcher").fetchall() == [("sip:10.0.0.1",)]
    assert db.execute("SELECT username FROM subscriber").fetchall() == [("a",)]
    add_trunk(db, TrunkRow(TRUNK, flags=0, reg_delay=3))
    with pytest.raises(sqlite3.IntegrityError):  # l_uuid is the key
        db.execute("INSERT INTO uacreg (l_uuid) VALUES ('pbx1')")
    assert list_trunks(db) == [TrunkRow(TRUNK, 0, 3)]
    db.execute("INSERT INTO uacreg (l_uuid, r_username, r_domain, expires) VALUES ('bad', '', 'x', 5)")
    assert [r.trunk.l_uuid for r in list_trunks(db)] == ["pbx1"]  # an unusable row is skipped
    db.close()


def test_trunk_cli_add_list_replace_del(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path / 'op.db'}"
    base = ["trunk", "add", "--db", url, "pbx1", "--l-user", "office@Example.com", "--r-user", "pbx@trunk.example"]
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main([*base, "--password", "-", "--proxy", "sip:127.0.0.1:5099", "--expires", "60"]) == 0
    assert main(["trunk", "list", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "pbx1\tsip:office@example.com\tsip:pbx@trunk.example\tsip:127.0.0.1:5099\texpires=60" in out
    assert "s3cret" not in out
    db = connect(url)
    assert [r.trunk.auth_password for r in list_trunks(db)] == ["s3cret"]
    assert main([*base, "--flags", "1"]) == 0  # replaces the row
    rows = list_trunks(db)
    assert len(rows) == 1 and rows[0].flags == 1 and not rows[0].registers and rows[0].trunk.auth_proxy == ""
    db.close()
    assert main([*base[:4], "bad uuid", *base[5:]]) == 2
    assert main([*base, "--proxy", "not a uri"]) == 2
    assert main([*base, "--expires", "-1"]) == 2
    assert main(["trunk", "add", "--db", url, "x", "--l-user", "nodomain", "--r-user", "a@b"]) == 2
    assert main(["trunk", "del", "--db", url, "pbx1"]) == 0
    assert main(["trunk", "del", "--db", url, "pbx1"]) == 1
    assert main(["trunk", "list", "--db", "mysql://x"]) == 2


def test_unregister_sends_expires_0_and_answers_challenge() -> None:
    reg = Registration(TRUNK, "sip:pbx1@127.0.0.1:5060")
    assert reg.unregister(0.0) is None  # never registered: nothing to remove
    reg = Registration(TRUNK, "sip:pbx1@127.0.0.1:5060")
    first = reg.poll(0.0)
    assert first is not None and first.get("Expires") == "60"
    assert reg.on_response(_answer(first, 200, ("Expires", "60")), 1.0) is None
    assert reg.state is RegState.REGISTERED
    bye = reg.unregister(2.0)
    assert bye is not None and bye.get("Expires") == "0" and bye.get("Call-ID") == first.get("Call-ID")
    assert bye.get("Contact") == "<sip:pbx1@127.0.0.1:5060>" and bye.get("CSeq") == "2 REGISTER"
    assert reg.state.value == "unregistering" and reg.next_deadline() is None
    challenge = ("WWW-Authenticate", build_challenge("trunk.example", "n9", "MD5"))
    again = reg.on_response(_answer(bye, 401, challenge), 2.1)
    assert again is not None and again.get("Expires") == "0" and again.get("CSeq") == "3 REGISTER"
    creds = parse_credentials(again.get("Authorization") or "")
    assert creds is not None and creds.username == "pbx" and creds.nonce == "n9"
    assert reg.on_response(_answer(again, 200), 2.2) is None
    assert reg.state.value == "unregistered" and not reg.is_registered(2.3)
    assert reg.poll(1000.0) is None and reg.unregister(3.0) is None  # nothing more, ever


def test_registry_follows_table_changes() -> None:
    config_trunk = Trunk("cfg", "u", "example.com", "c", "trunk.example")
    registry = TrunkRegistry([config_trunk])
    row = TrunkRow(TRUNK)
    assert registry.apply_rows([row, TrunkRow(Trunk("cfg", "x", "x", "x", "x"))]) == (1, 0, 0)
    assert registry.lookup("cfg") == config_trunk  # the configuration entry wins
    assert registry.sources == {"cfg": "config", "pbx1": "db"}
    assert registry.apply_rows([row]) == (0, 0, 0)  # unchanged rows keep their registration
    first = registry.registrations["pbx1"]
    changed = TrunkRow(TRUNK, flags=1)
    assert registry.apply_rows([changed]) == (0, 1, 0)
    assert registry.registrations["pbx1"] is not first
    states = {s["l_uuid"]: s for s in registry.snapshot(100.0)}
    assert states["pbx1"]["state"] == "disabled" and states["cfg"]["state"] == "idle"
    assert "secret" not in json.dumps(states)
    assert registry.apply_rows([]) == (0, 0, 1)
    assert registry.lookup("pbx1") is None and registry.status("pbx1", 0.0) == -99
    assert registry.lookup("cfg") == config_trunk  # configuration entries stay


def test_snapshot_states_with_times() -> None:
    registry = TrunkRegistry([TRUNK], retry_interval=2.0)
    reg = registry.registrations["pbx1"]
    req = reg.poll(0.0)
    assert req is not None
    reg.on_response(_answer(req, 200, ("Expires", "60")), 10.0)
    snap = registry.snapshot(20.0)[0]
    assert snap["state"] == "registered" and snap["expires_in"] == 50.0 and snap["retry_at"] is None
    refresh = reg.poll(100.0)
    assert refresh is not None
    reg.on_response(_answer(refresh, 403), 100.0)
    snap = registry.snapshot(101.0)[0]
    assert snap["state"] == "failed" and snap["expires_at"] is None and snap["last_status"] == 403
    assert snap["retry_at"] is not None and snap["next_in"] == 1.0


class _App:
    def __init__(self, registry: TrunkRegistry | None) -> None:
        self.registry = registry

    def trunk_list(self) -> dict[str, object] | None:
        return None if self.registry is None else {"trunks": self.registry.snapshot(0.0)}


async def test_trunks_endpoint_and_ctl() -> None:
    ep = Endpoints(_App(TrunkRegistry([TRUNK])), CollectorRegistry())  # type: ignore[arg-type]
    reply = await ep.dispatch("GET", "/trunks")
    body = json.loads(reply.body)
    assert reply.status == 200 and body["trunks"][0]["l_uuid"] == "pbx1"
    assert (await ep.dispatch("POST", "/trunks")).status == 405
    none = Endpoints(_App(None), CollectorRegistry())  # type: ignore[arg-type]
    assert (await none.dispatch("GET", "/trunks")).status == 404
    assert _plan(argparse.Namespace(ctl_command="trunks")) == ("GET", "/trunks")
    out = io.StringIO()
    body["trunks"][0].update(state="failed", retry_at=1.0e9, failures_in_a_row=3, last_status=403,
                             last_reason="Forbidden")  # fmt: skip
    _human("trunks", body, out)
    line = out.getvalue()
    assert line.startswith("pbx1\tfailed (backoff until ") and "3 in a row" in line and "403 Forbidden" in line


class _Registrar:
    """A stand-in for the proxy core: every REGISTER it is given is logged and answered 200 at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (Contact user, Expires, Call-ID)
        self.timers = type("T", (), {"t1": 0.5})()

    async def locate(self, uri: object) -> list[Address]:
        return [Address("udp", "127.0.0.1", 5099)]

    def local_address(self, dest: Address) -> Address:
        return Address("udp", "127.0.0.1", 5060)

    async def start_client(self, request: Request, dest: Address, user: TrunkClient) -> object:
        contact = request.get("Contact") or ""
        expires = request.get("Expires") or ""
        self.sent.append((contact.split("@")[0].removeprefix("<sip:"), expires, request.get("Call-ID") or ""))
        ok = make_response(request, 200, "OK", to_tag="r")
        if expires != "0":
            ok.append("Contact", f"{contact};expires={expires}")
        user.deliver(BranchEvent(response=ok))
        return object()

    def detach(self, txn: object) -> None:
        pass


async def test_running_registry_reregisters_changed_unregisters_deleted_and_all_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = _Registrar()
    registry = TrunkRegistry([])
    registry.apply_rows([TrunkRow(TRUNK), TrunkRow(replace(TRUNK, l_uuid="pbx2"), reg_delay=10)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.run, cast(Any, core))
        await trio.sleep(1)
        assert core.sent == [("pbx1", "60", core.sent[0][2])]  # pbx2 waits for its reg_delay
        await trio.sleep(10)
        assert [s[:2] for s in core.sent] == [("pbx1", "60"), ("pbx2", "60")]
        old_call_id = core.sent[0][2]
        core.sent.clear()
        pbx2 = TrunkRow(replace(TRUNK, l_uuid="pbx2"), reg_delay=10)
        registry.apply_rows([TrunkRow(replace(TRUNK, expires=120)), pbx2])
        await trio.sleep(1)
        # The old binding goes first (its Call-ID), then the row as it is now registers (a new Call-ID).
        assert core.sent[0] == ("pbx1", "0", old_call_id)
        assert core.sent[1][:2] == ("pbx1", "120") and core.sent[1][2] != old_call_id
        assert len(core.sent) == 2  # pbx2 did not change: not touched
        core.sent.clear()
        registry.apply_rows([TrunkRow(replace(TRUNK, expires=120))])
        await trio.sleep(1)
        assert [s[:2] for s in core.sent] == [("pbx2", "0")]
        assert [s["l_uuid"] for s in registry.snapshot(trio.current_time())] == ["pbx1"]
        core.sent.clear()
        assert await registry.unregister_all(2.0) == 1
        assert [s[:2] for s in core.sent] == [("pbx1", "0")]
        registry.apply_rows([TrunkRow(TRUNK)])  # stopping: no new registration
        await trio.sleep(5)
        assert len(core.sent) == 1
        nursery.cancel_scope.cancel()
