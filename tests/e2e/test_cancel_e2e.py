"""End-to-end: the caller's CANCEL and the ring timers give the caller exactly one final response.

Two proxies serve most of the module (one start each): the embedded default script (Timer C set short),
and a script whose failure routes return early on ``t_is_canceled``, relay to the next contacts, or ring
with ``t_set_fr``, chosen by the called user; each test registers its own user, so the tests share the
proxies but not their state. The static router (no script) needs its stages in its configuration: that
test starts its own.

"Exactly one" is checked by SIPp: the caller's scenario ends with a second of quiet after its ACK, and any
final response it does not expect fails the call (a retransmission of the same final is absorbed); the
test also counts the distinct finals (status, To tag) the caller saw and the proxy's transaction log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import CORE, Lab, ProxyRun, SippRun

pytestmark = pytest.mark.e2e

ROUTES = """
function ksr_request_route()
  if KSR.is_REGISTER() then
    KSR.registrar.save("location", 0)
    return
  end
  local user = KSR.pv.get("$rU")
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  KSR.tm.t_load_contacts()
  KSR.tm.t_next_contacts()
  if user == "next" then
    KSR.tm.t_on_failure("failure_next")
  elseif user == "ring" or user == "silent" then
    KSR.tm.t_set_fr(1500, 1000)
    KSR.tm.t_on_failure("failure_early")
  else
    KSR.tm.t_on_failure("failure_early")
  end
  KSR.tm.t_relay()
end

function failure_early()
  if KSR.tm.t_is_canceled() > 0 then return 1 end
end

function failure_next()
  -- no t_is_canceled check: after the CANCEL the relay is refused and makes no branch
  if KSR.tm.t_next_contacts() > 0 then
    KSR.tm.t_on_failure("failure_next")
    KSR.tm.t_relay()
  end
end
"""


@dataclass
class Proxies:
    default: ProxyRun  # the embedded default script, Timer C 2 s
    script: ProxyRun  # ROUTES


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    lab = Lab(tmp_path_factory.mktemp("cancel-proxies"))
    try:
        path = lab.workdir / "cancel.lua"
        path.write_text(ROUTES)
        yield Proxies(
            default=lab.proxy(timer_c=2.0),
            script=lab.proxy(script=str(path)),
        )
    finally:
        lab.close()


def register(lab: Lab, proxy: ProxyRun, user: str, callee: SippRun, q: str = "1.0") -> None:
    reg = lab.uac(
        "lua_register.xml",
        proxy.address,
        keys={"contact_port": str(callee.port), "q": q},
        extra_args=["-s", user],
        name=f"reg-{callee.name}",
    )
    lab.expect_success(reg)


def invite_finals(uac: SippRun) -> set[tuple[int, str]]:
    """The distinct final responses to the INVITE the caller received (a retransmission is the same)."""
    return {
        (m.status, m.to_tag)
        for m in uac.received()
        if m.method == "INVITE" and m.status is not None and m.status >= 200
    }


def logged_statuses(proxy: ProxyRun, user: str) -> list[str]:
    return [ln.split()[-2] for ln in proxy.transaction_lines("INVITE") if f"sip:{user}@" in ln]


def expect_one_final(lab: Lab, uac: SippRun, proxy: ProxyRun, user: str, status: int) -> None:
    finals = invite_finals(uac)
    assert len(finals) == 1 and {s for s, _ in finals} == {status}, lab.diagnostics()
    assert logged_statuses(proxy, user) == [f"status={status}"], proxy.log()


def cancel_two_ringing(lab: Lab, proxy: ProxyRun, user: str) -> tuple[SippRun, SippRun, SippRun]:
    """Two contacts of ``user`` ring in parallel; the caller CANCELs."""
    first = lab.uas("uas_ring_cancel.xml", name="first")
    second = lab.uas("uas_ring_cancel.xml", name="second")
    register(lab, proxy, user, first)
    register(lab, proxy, user, second)
    uac = lab.uac("uac_cancel_quiet.xml", proxy.address, extra_args=["-s", user])
    lab.expect_success(uac, first, second)
    assert len(first.received("CANCEL")) == 1 and len(second.received("CANCEL")) == 1, lab.diagnostics()
    assert {s for s, _ in invite_finals(uac)} <= {487}
    assert [m.status for m in uac.received() if m.method == "CANCEL"] == [200], lab.diagnostics()
    return uac, first, second


# -- the caller's CANCEL -----------------------------------------------------------------------------------


def test_cancel_with_the_default_script(lab: Lab, proxies: Proxies) -> None:
    """The default script's failure route returns on t_is_canceled; the caller gets the 487 (16.10)."""
    uac, _, _ = cancel_two_ringing(lab, proxies.default, "alice")
    expect_one_final(lab, uac, proxies.default, "alice", 487)


def test_cancel_with_a_failure_route_returning_early(lab: Lab, proxies: Proxies) -> None:
    """`if KSR.tm.t_is_canceled() > 0 then return 1 end`: the caller still gets its 487."""
    uac, _, _ = cancel_two_ringing(lab, proxies.script, "early")
    expect_one_final(lab, uac, proxies.script, "early", 487)


def test_cancel_with_a_failure_route_relaying_to_the_next_contacts(lab: Lab, proxies: Proxies) -> None:
    """The failure route relays to the q=0.5 contact after the CANCEL: refused, no branch, 487 (16.10)."""
    watcher = lab.uas("uas_silent.xml", name="next-contact")
    register(lab, proxies.script, "next", watcher, q="0.5")
    uac, _, _ = cancel_two_ringing(lab, proxies.script, "next")
    expect_one_final(lab, uac, proxies.script, "next", 487)
    assert watcher.received("INVITE") == [], lab.diagnostics()


def test_cancel_during_the_second_serial_stage_default_script(lab: Lab, proxies: Proxies) -> None:
    """q=1.0 rings then answers 486, the failure route rings q=0.5; the CANCEL comes: 487, not the 486."""
    busy = lab.uas("uas_reject.xml", name="busy", subst={"STATUS": "486", "REASON": "Busy Here"})
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    register(lab, proxies.default, "bob", busy, "1.0")
    register(lab, proxies.default, "bob", ringing, "0.5")
    uac = lab.uac("uac_cancel_quiet.xml", proxies.default.address, extra_args=["-s", "bob"])
    lab.expect_success(uac, busy, ringing)
    assert len(busy.received("ACK")) == 1 and len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    expect_one_final(lab, uac, proxies.default, "bob", 487)


def test_cancel_during_the_second_serial_stage_without_a_script(lab: Lab) -> None:
    """The static router's two stages: the CANCEL in stage two gives 487 and no other final."""
    busy = lab.uas("uas_reject.xml", name="busy", subst={"STATUS": "486", "REASON": "Busy Here"})
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    proxy = lab.proxy(**CORE, fork=[[f"sip:a@{busy.address}"], [f"sip:b@{ringing.address}"]])
    uac = lab.uac("uac_cancel_quiet.xml", proxy.address, extra_args=["-s", "carl"])
    lab.expect_success(uac, busy, ringing)
    assert len(busy.received("ACK")) == 1 and len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    expect_one_final(lab, uac, proxy, "carl", 487)


# -- ring timers -------------------------------------------------------------------------------------------


def test_timer_c_with_the_default_script(lab: Lab, proxies: Proxies) -> None:
    """Timer C (2 s) CANCELs the ringing contact; the failure route finds no next contact: the 487 goes up."""
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    register(lab, proxies.default, "carol", ringing)
    uac = lab.uac("uac_failed.xml", proxies.default.address, subst={"FINAL": "487"}, extra_args=["-s", "carol"])
    lab.expect_success(uac, ringing)
    assert len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    expect_one_final(lab, uac, proxies.default, "carol", 487)


def test_t_set_fr_ring_time(lab: Lab, proxies: Proxies) -> None:
    """t_set_fr(1500, 1000): the ringing contact is CANCELled after 1.5 s; the caller gets the 487."""
    ringing = lab.uas("uas_ring_cancel.xml", name="ringing")
    register(lab, proxies.script, "ring", ringing)
    uac = lab.uac("uac_failed.xml", proxies.script.address, subst={"FINAL": "487"}, extra_args=["-s", "ring"])
    lab.expect_success(uac, ringing)
    assert len(ringing.received("CANCEL")) == 1, lab.diagnostics()
    expect_one_final(lab, uac, proxies.script, "ring", 487)


def test_t_set_fr_no_answer_is_408(lab: Lab, proxies: Proxies) -> None:
    """t_set_fr(1500, 1000) and a callee that never answers: after 1 s the caller gets one 408."""
    silent = lab.uas("uas_silent.xml", name="silent")
    register(lab, proxies.script, "silent", silent)
    uac = lab.uac("uac_failed.xml", proxies.script.address, subst={"FINAL": "408"}, extra_args=["-s", "silent"])
    lab.expect_success(uac)
    assert silent.received("CANCEL") == [], lab.diagnostics()
    expect_one_final(lab, uac, proxies.script, "silent", 408)
