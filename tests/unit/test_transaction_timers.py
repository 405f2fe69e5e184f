"""Pure timer values (RFC 3261 Table 4, RFC 6026) and the shape of the state-machine tables."""

from __future__ import annotations

import pytest

from trioproxy.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Machine,
    State,
    Timers,
)
from trioproxy.transaction.timers import RETRANSMIT_TIMERS, TIMER_NAMES

T = Timers()

MACHINES = [INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER]


def test_defaults_are_rfc_table_4() -> None:
    assert (T.t1, T.t2, T.t4, T.timer_c, T.timer_d) == (0.5, 4.0, 5.0, 180.0, 32.0)


@pytest.mark.parametrize(
    ("name", "unreliable", "reliable"),
    [
        ("timer_a", 0.5, 0.5),
        ("timer_b", 32.0, 32.0),
        ("timer_d", 32.0, 0.0),
        ("timer_e", 0.5, 0.5),
        ("timer_f", 32.0, 32.0),
        ("timer_g", 0.5, 0.5),
        ("timer_h", 32.0, 32.0),
        ("timer_i", 5.0, 0.0),
        ("timer_j", 32.0, 0.0),
        ("timer_k", 5.0, 0.0),
        ("timer_l", 32.0, 32.0),
        ("timer_m", 32.0, 32.0),
        ("timer_cancel", 32.0, 32.0),
        ("timer_guard", 32.0, 32.0),
    ],
)
def test_initial_durations(name: str, unreliable: float, reliable: float) -> None:
    assert T.initial(name, False) == unreliable
    assert T.initial(name, True) == reliable


def test_initial_durations_follow_t1_and_t4() -> None:
    t = Timers(t1=0.1, t2=1.0, t4=2.0)
    assert t.initial("timer_b", False) == pytest.approx(6.4)
    assert t.initial("timer_j", False) == pytest.approx(6.4)
    assert t.initial("timer_k", False) == 2.0
    assert t.initial("timer_i", False) == 2.0
    assert t.initial("timer_d", False) == 32.0  # at least 32 s (Table 4)
    assert Timers(t1=1.0, t2=4.0).initial("timer_d", False) == 64.0  # outlasts the server's Timer H


def test_every_timer_has_a_duration() -> None:
    for name in TIMER_NAMES:
        assert T.initial(name, False) > 0
    with pytest.raises(KeyError):
        T.initial("timer_z", False)


def test_timer_a_doubles_without_cap() -> None:
    # 17.1.1.2: A fires at T1, then 2*T1, 4*T1 ... apart, until Timer B at 64*T1.
    assert T.schedule("timer_a", 64 * T.t1) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert T.backoff("timer_a", 8.0) == 16.0


def test_timer_e_doubles_up_to_t2() -> None:
    # 17.1.2.2: intervals 0.5, 1, 2, 4, 4, 4 ...
    assert T.schedule("timer_e", 20.0) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert T.backoff("timer_e", 4.0) == 4.0


def test_timer_e_is_t2_once_proceeding() -> None:
    assert T.backoff("timer_e", 0.5, proceeding=True) == 4.0
    assert T.schedule("timer_e", 9.0, proceeding=True) == [0.5, 4.5, 8.5]


def test_timer_g_doubles_up_to_t2() -> None:
    assert T.schedule("timer_g", 32.0) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_time_until_timer_e_reaches_t2() -> None:
    # RFC 4320 4.1: E is reset to T2 at its third firing, 0.5 + 1 + 2 = 3.5 s after the first send.
    assert T.e_reaches_t2 == 3.5
    assert Timers(t1=0.5, t2=0.5).e_reaches_t2 == 0.0
    assert Timers(t1=1.0, t2=4.0).e_reaches_t2 == 3.0


def test_backoff_of_a_non_retransmission_timer_is_an_error() -> None:
    with pytest.raises(KeyError):
        T.backoff("timer_b", 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"t1": 0.0}, {"t1": 5.0, "t2": 4.0}, {"t4": 0.0}, {"timer_c": 0.0}, {"timer_d": -1.0}],
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timers(**kwargs)


# -- the tables ----------------------------------------------------------------------------------


def _timer_effects(effects: tuple[str, ...]) -> set[str]:
    out = set()
    for effect in effects:
        for prefix in ("start_", "backoff_"):
            if effect.startswith(prefix):
                out.add("timer_" + effect[len(prefix) :])
    return out


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_started_timers_are_allowed_in_the_target_state(machine: Machine) -> None:
    steps = [machine.start, *machine.table.values()]
    for step in steps:
        if step.state is State.TERMINATED:
            continue
        assert _timer_effects(step.effects) <= machine.state_timers[step.state], step


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_timer_inputs_only_where_the_timer_may_run(machine: Machine) -> None:
    for state, event in machine.table:
        if event.startswith("timer_"):
            assert event in machine.state_timers[state], (state, event)
            assert event in TIMER_NAMES


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_live_state_handles_transport_errors(machine: Machine) -> None:
    for state in machine.state_timers:
        if state is State.CONFIRMED:
            continue  # nothing is sent in Confirmed
        assert machine.table[(state, "transport_err")].state is State.TERMINATED


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_state_but_the_tu_wait_has_a_timer_to_terminated(machine: Machine) -> None:
    # Memory stays flat: apart from the INVITE states where the proxy's Timer C and CANCEL bound the
    # wait, every state has a timer that leads (directly) to Terminated.
    for state in machine.state_timers:
        if (machine is INVITE_SERVER or machine is INVITE_CLIENT) and state is State.PROCEEDING:
            continue
        ends = [
            e for (s, e), step in machine.table.items()
            if s is state and e.startswith("timer_") and step.state is State.TERMINATED
        ]  # fmt: skip
        assert ends, (machine.name, state)


def test_retransmission_timers_are_known() -> None:
    assert RETRANSMIT_TIMERS == {"timer_a", "timer_e", "timer_g"}
