"""End-to-end: the registrar and location service with real SIPp user agents.

SIPp REGISTERs bind users to SIPp callees' addresses through a ``trioproxy run`` process running the
embedded default script (``KSR.registrar.save`` / ``lookup``); a SIPp caller then calls the users through
the proxy. Covered: serial forking by q (RFC 3261 16.6 step 1: higher q first; the default script's failure
route tries the next contact on 486), a single contact, removal with Expires 0 and with ``Contact: *``
(10.2.2), 423 below min_expires (10.3 step 7), an expired binding (10.3 step 8 / 10.2.1.1), bindings kept
across a restart (sqlite), two proxies sharing one Redis, and bulk registration from a CSV of users on each
backend (checked with ``trioproxy ctl --json registrations``). ``scripts/bench_register.py`` is the full-size
version of the bulk test (10,000 users, registration rate per backend).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import HOST, Lab, ProxyRun, SippRun, free_port
from tests.redis_server import redis_server_url, unique_prefix

pytestmark = pytest.mark.e2e

__all__ = ["redis_server_url"]  # the session fixture, wired here for this module

CTL_TIMEOUT = 15.0  # bound on one `trioproxy ctl` process
LAPSE_TIMEOUT = 15.0  # bound on waiting for a short binding to expire
DRAIN_TIME = 0.2  # seconds a proxy drains on SIGTERM


# -- helpers ------------------------------------------------------------------------------------------------


def start_proxy(lab: Lab, *, location: str = "memory:", config: str = "") -> tuple[ProxyRun, str]:
    """A proxy with its own management port (and, given ``config`` TOML text, that configuration file)."""
    mgmt = f"{HOST}:{free_port()}"
    # This -c comes after the harness's and wins; the harness's --listen options still apply. A short
    # drain time lets the proxy exit at once on SIGTERM when the test ends.
    path = lab.workdir / f"registrar{len(lab.proxies)}.toml"
    path.write_text(f"[proxy]\ndrain_time = {DRAIN_TIME}\n\n[routing]\nwatch = false\n\n{config}")
    args = ["-c", str(path), "--mgmt", mgmt, "--location", location]
    return lab.proxy(extra_args=args), mgmt


def register(
    lab: Lab,
    proxy: ProxyRun,
    user: str,
    contact: str,
    *,
    params: str = "",
    expires: int = 3600,
    name: str,
) -> SippRun:
    """REGISTER ``sip:user@127.0.0.1`` -> ``contact`` with SIPp through ``proxy``; asserts its 200."""
    run = lab.uac(
        "reg_register.xml",
        proxy.address,
        keys={"contact": contact, "contact_params": params, "expires": str(expires)},
        extra_args=["-s", user],
        name=name,
    )
    lab.expect_success(run)
    return run


def contact_of(uas: SippRun, user: str) -> str:
    return f"sip:{user}@{uas.address}"


def reply_contacts(run: SippRun) -> list[str]:
    """The Contact values of the 200 for a REGISTER (the AOR's bindings after it, 10.3 step 8)."""
    oks = run.received(status=200)
    assert len(oks) == 1, run.diagnostics()
    return [value for key, value in oks[0].headers if key in ("contact", "m")]


def call(lab: Lab, proxy: ProxyRun, user: str, *, name: str, final: int = 200) -> SippRun:
    """Call ``sip:user@proxy`` with a SIPp caller through ``proxy``: answered (200) or failing with ``final``."""
    if final == 200:
        return lab.uac("uac_call.xml", proxy.address, extra_args=["-s", user], name=name)
    return lab.uac(
        "uac_failed.xml", proxy.address, extra_args=["-s", user], name=name, subst={"FINAL": str(final)}
    )


def ctl(mgmt: str, *args: str) -> Any:
    """Run ``trioproxy ctl --json`` against ``mgmt`` and return its JSON answer."""
    cmd = [sys.executable, "-m", "trioproxy", "ctl", "--mgmt", mgmt, "--json", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=CTL_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def bindings(mgmt: str, aor: str) -> list[dict[str, Any]]:
    """The bindings of ``aor`` (``sip:user@host``) the proxy lists (keyed by ``user@host``)."""
    answer: dict[str, list[dict[str, Any]]] = ctl(mgmt, "registrations", aor)
    return answer.get(aor.removeprefix("sip:"), [])


def all_bindings(mgmt: str, page: int = 1000, max_pages: int = 100) -> dict[str, list[dict[str, Any]]]:
    """Every AOR's bindings, page by page (``ctl registrations --offset --limit``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for n in range(max_pages):
        answer: dict[str, list[dict[str, Any]]] = ctl(
            mgmt, "registrations", "--offset", str(n * page), "--limit", str(page)
        )
        if not answer:
            return out
        out.update(answer)
    raise AssertionError(f"more than {max_pages} pages of registrations")


def invite_uris(uas: SippRun) -> list[str]:
    return [m.first_line.split()[1] for m in uas.received("INVITE")]


def final_statuses(uac: SippRun) -> list[int]:
    return [
        m.status for m in uac.received() if m.method == "INVITE" and m.status is not None and m.status >= 200
    ]


_STAMPED = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s*\n(.*)\n\s*\n(.*)$", re.MULTILINE)


def first_time(run: SippRun, kind: str, first_line: str) -> datetime:
    """When SIPp logged the first message of ``kind`` ("message sent"/"message received") starting with
    ``first_line`` (the time stamps of its -trace_msg separators; every SIPp here shares one clock)."""
    text = run.message_file.read_text(errors="replace")
    for match in _STAMPED.finditer(text):
        if kind in match.group(2) and match.group(3).startswith(first_line):
            return datetime.fromisoformat(match.group(1))
    raise AssertionError(f"no {kind} {first_line!r} in {run.name}'s trace\n{run.diagnostics()}")


def kill_hard(proxy: ProxyRun) -> None:
    """SIGKILL the proxy by its PID (no clean shutdown) and reap it."""
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(timeout=10)


# -- registration, lookup, forking by q, removal, expiry ------------------------------------------------------


def test_higher_q_contact_is_tried_first_then_the_next(lab: Lab) -> None:
    """Two contacts for one user: q=0.9 answers 486, then q=0.5 is tried and answers 200 (16.6, 16.7)."""
    busy = lab.uas("uas_reject.xml", name="busy", subst={"STATUS": "486", "REASON": "Busy Here"})
    answer = lab.uas("uas_answer.xml", name="answer")
    proxy, mgmt = start_proxy(lab)
    # The lower-q contact registers first, so the order cannot come from registration order.
    register(lab, proxy, "bob", contact_of(answer, "bob"), params=";q=0.5", name="reg_low")
    reg = register(lab, proxy, "bob", contact_of(busy, "bob"), params=";q=0.9", name="reg_high")
    listed = reply_contacts(reg)
    assert len(listed) == 2 and any(answer.address in c for c in listed), listed

    stored = bindings(mgmt, "sip:bob@127.0.0.1")
    assert [(b["contact"], b["q"]) for b in stored] == [
        (contact_of(busy, "bob"), 0.9),
        (contact_of(answer, "bob"), 0.5),
    ], stored

    uac = call(lab, proxy, "bob", name="caller")
    lab.expect_success(uac, busy, answer)
    assert invite_uris(busy) == [contact_of(busy, "bob")], lab.diagnostics()
    assert invite_uris(answer) == [contact_of(answer, "bob")], lab.diagnostics()
    # Serial, not parallel: the second contact got its INVITE only after the first one's 486.
    busy_at = first_time(busy, "message sent", "SIP/2.0 486")
    answer_invited_at = first_time(answer, "message received", "INVITE ")
    assert busy_at < answer_invited_at, lab.diagnostics()
    assert set(final_statuses(uac)) == {200}, lab.diagnostics()
    assert [ln.split()[-3:-1] for ln in proxy.transaction_lines("INVITE")] == [["branches=2", "status=200"]]

    # Contact: * with Expires: 0 removes both bindings at once (10.2.2); the 200 then lists none.
    wipe = lab.uac("reg_unregister_all.xml", proxy.address, extra_args=["-s", "bob"], name="wipe")
    lab.expect_success(wipe)
    assert reply_contacts(wipe) == [], wipe.diagnostics()
    assert bindings(mgmt, "sip:bob@127.0.0.1") == []


def test_single_contact_is_called_then_unregistered(lab: Lab) -> None:
    """One contact: the call reaches it; after REGISTER with Expires 0 the user gets 404 (10.2.2).
    An interval below the default min_expires (60) is refused with 423 and Min-Expires (10.3 step 7)."""
    phone = lab.uas("uas_answer.xml", name="phone")
    proxy, mgmt = start_proxy(lab)
    brief = lab.uac(
        "reg_rejected.xml",
        proxy.address,
        keys={"contact": contact_of(phone, "alice"), "expires": "30"},
        extra_args=["-s", "alice"],
        name="brief",
        subst={"STATUS": "423"},
    )
    lab.expect_success(brief)
    assert [m.header("min-expires") for m in brief.received(status=423)] == ["60"], brief.diagnostics()
    assert bindings(mgmt, "sip:alice@127.0.0.1") == []

    register(lab, proxy, "alice", contact_of(phone, "alice"), name="reg")

    uac = call(lab, proxy, "alice", name="caller")
    lab.expect_success(uac, phone)
    assert invite_uris(phone) == [contact_of(phone, "alice")]
    assert [ln.split()[-3:-1] for ln in proxy.transaction_lines("INVITE")] == [["branches=1", "status=200"]]

    unreg = register(lab, proxy, "alice", contact_of(phone, "alice"), expires=0, name="unreg")
    assert reply_contacts(unreg) == [], unreg.diagnostics()
    assert bindings(mgmt, "sip:alice@127.0.0.1") == []

    late = call(lab, proxy, "alice", name="late", final=404)
    lab.expect_success(late)
    assert final_statuses(late) == [404], lab.diagnostics()
    assert len(phone.received("INVITE")) == 1  # the first call only


def test_expired_binding_is_not_called(lab: Lab) -> None:
    """A binding registered for 2 s: once it lapses the user has no contact and a call gets 404."""
    phone = lab.uas("uas_answer.xml", name="phone")
    proxy, mgmt = start_proxy(lab, config="[registrar]\nmin_expires = 1\n")
    reg = register(lab, proxy, "carol", contact_of(phone, "carol"), expires=2, name="reg")
    assert [c.endswith(";expires=2") for c in reply_contacts(reg)] == [True], reg.diagnostics()

    deadline = time.monotonic() + LAPSE_TIMEOUT
    while bindings(mgmt, "sip:carol@127.0.0.1"):
        assert time.monotonic() < deadline, "the 2 s binding is still listed"
        time.sleep(0.5)

    uac = call(lab, proxy, "carol", name="caller", final=404)
    lab.expect_success(uac)
    assert final_statuses(uac) == [404], lab.diagnostics()
    assert phone.received("INVITE") == [], lab.diagnostics()


# -- persistence and sharing ------------------------------------------------------------------------------


def test_sqlite_bindings_survive_a_killed_proxy(lab: Lab) -> None:
    """Proxy A (sqlite) takes a REGISTER and is killed with SIGKILL; proxy B on the same file routes the call."""
    phone = lab.uas("uas_answer.xml", name="phone")
    location = f"sqlite:///{lab.workdir / 'location.db'}"
    first, _ = start_proxy(lab, location=location)
    register(lab, first, "dave", contact_of(phone, "dave"), name="reg")
    kill_hard(first)

    second, mgmt = start_proxy(lab, location=location)
    assert [b["contact"] for b in bindings(mgmt, "sip:dave@127.0.0.1")] == [contact_of(phone, "dave")]
    uac = call(lab, second, "dave", name="caller")
    lab.expect_success(uac, phone)
    assert invite_uris(phone) == [contact_of(phone, "dave")]
    # The INVITE came from the new proxy's socket (its Via), the binding outliving the old process.
    assert f"{HOST}:{second.port}" in phone.received("INVITE")[0].header("via"), lab.diagnostics()


def test_two_proxies_share_one_redis(lab: Lab, redis_server_url: str) -> None:
    """A user registers through proxy 1; a caller calls through proxy 2 (same Redis) and reaches it."""
    phone = lab.uas("uas_answer.xml", name="phone")
    user = f"erin{unique_prefix().rstrip(':')}"
    one, _ = start_proxy(lab, location=redis_server_url)
    two, mgmt_two = start_proxy(lab, location=redis_server_url)
    register(lab, one, user, contact_of(phone, user), name="reg")

    assert [b["contact"] for b in bindings(mgmt_two, f"sip:{user}@127.0.0.1")] == [contact_of(phone, user)]
    uac = call(lab, two, user, name="caller")
    lab.expect_success(uac, phone)
    assert invite_uris(phone) == [contact_of(phone, user)]
    assert one.transaction_lines("INVITE") == [], one.log()
    assert [ln.split()[-2] for ln in two.transaction_lines("INVITE")] == ["status=200"], two.log()


# -- bulk registration from a CSV of users ------------------------------------------------------------------

BULK_USERS = 1000
BULK_RATE = 500  # REGISTERs per second asked of SIPp


def write_users(path: Path, users: list[str]) -> None:
    """A SIPp injection file: SEQUENTIAL, one user per line (``[field0]``)."""
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};\n" for u in users))


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_bulk_registrations_are_all_reachable(lab: Lab, backend: str, request: pytest.FixtureRequest) -> None:
    """1,000 users registered from a CSV at a steady rate: every REGISTER gets 200, every AOR is listed
    with its contact, and sample users (first and last) are reachable by a call."""
    if backend == "redis":
        location = str(request.getfixturevalue("redis_server_url"))
    elif backend == "sqlite":
        location = f"sqlite:///{lab.workdir / 'location.db'}"
    else:
        location = "memory:"
    prefix = f"b{backend[0]}{unique_prefix().rstrip(':')}u"
    users = [f"{prefix}{i:05d}" for i in range(BULK_USERS)]
    sample = [users[0], users[-1]]
    phone = lab.uas("uas_answer.xml", name="phone", extra_args=["-m", str(len(sample))])
    proxy, mgmt = start_proxy(lab, location=location)
    csv = lab.workdir / "users.csv"
    write_users(csv, users)

    reg = lab.uac(
        "reg_users.xml",
        proxy.address,
        calls=len(users),
        keys={"contact_hostport": phone.address, "expires": "3600"},
        extra_args=["-inf", str(csv), "-r", str(BULK_RATE), "-l", "200"],
        name="bulk",
    )
    lab.expect_success(reg)
    # One 200 per REGISTER (a retransmitted 200 on a loaded machine counts once).
    assert len({m.header("call-id") for m in reg.received(status=200)}) == len(users), lab.diagnostics()

    mine = {aor: b for aor, b in all_bindings(mgmt).items() if aor.startswith(prefix)}
    assert len(mine) == len(users), f"{len(mine)} of {len(users)} AORs listed"
    expected = {f"{u}@127.0.0.1": [f"sip:{u}@{phone.address}"] for u in users}
    assert {aor: [b["contact"] for b in bs] for aor, bs in mine.items()} == expected

    for i, user in enumerate(sample):
        lab.expect_success(call(lab, proxy, user, name=f"caller{i}"))
    lab.expect_success(phone)
    assert invite_uris(phone) == [f"sip:{u}@{phone.address}" for u in sample], lab.diagnostics()
