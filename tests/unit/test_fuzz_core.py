"""Full-stack fuzzing of the proxy core: mutated requests and responses through ``Proxy`` and the Lua router.

Each Hypothesis example starts the real core (``trioproxy.proxy.Proxy``) with the embedded default route
script on a fake network and trio's virtual clock, registers a user, then injects mutated messages the way a
UDP listener delivers them (bytes that parse become messages; bytes that do not are dropped, or become a
``Malformed`` when their start line and top Via read, as ``trioproxy.transport.udp`` does). Requests the proxy
forwards get mutated answers from the downstream side. The clock then runs past every timer (64*T1, Timer C,
Timer D). Checked, for every example:

- no exception leaves the proxy (its nursery would raise out of ``trio.run``), and no internal error was
  caught and logged by a fault boundary (a log record carrying a traceback, or the ``trioproxy.faults``
  logger);
- every message the proxy sent parses again (it never puts out what it cannot read itself);
- the transaction table is empty once the timers have run out.

Mutations come from ``trioproxy.testing.mutate`` (shared with ``scripts/fuzz_blast.py``); Hypothesis draws the
(mutation, seed) steps, so a failure shrinks to a few steps and replays exactly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioproxy.location import MemoryStore, Registrar, RegistrarPolicy
from trioproxy.proxy import Proxy
from trioproxy.routing.holder import ScriptHolder
from trioproxy.routing.router import LuaRouter
from trioproxy.server import DEFAULT_SCRIPT
from trioproxy.sip import URI, Address, Request, Response, SIPError, make_response, parse_message_untrusted
from trioproxy.testing.mutate import MUTATIONS, apply_steps, fill, mutate, seed_requests, seed_responses
from trioproxy.testing.network import CALLER, PROXY, FakeFlow, FakeTransport, Sent
from trioproxy.transaction import Timers
from trioproxy.transport.inbound import answerable_request
from trioproxy.transport.types import Malformed

TIMERS = Timers(t1=0.5, t2=4.0, t4=5.0, timer_c=30.0, timer_d=32.0)
# Past every timer a transaction can still have running once the last message is in.
RUN_OUT = 64 * TIMERS.t1 + TIMERS.timer_c + TIMERS.timer_d + 10.0
CALLEE = Address("udp", "127.0.0.3", 5060)

REQUESTS = seed_requests(CALLER.host, CALLER.port)
RESPONSES = seed_responses(PROXY.host, PROXY.port)

# -- strategies ------------------------------------------------------------------------------------------------

steps = st.lists(
    st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2**32 - 1)), min_size=0, max_size=3
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid request of the seed set with 0..3 mutations (0: the proxy must still cope with the valid one)."""
    return apply_steps(
        fill(draw(st.sampled_from(REQUESTS)), draw(st.sampled_from(["1", "2", "x9"]))), draw(steps)
    )


@st.composite
def mutated_responses(draw: st.DrawFn) -> bytes:
    """A stray response (no transaction of ours) with 1..3 mutations."""
    one = st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2**32 - 1))
    return apply_steps(
        fill(draw(st.sampled_from(RESPONSES)), "r1"), draw(st.lists(one, min_size=1, max_size=3))
    )


@dataclass(frozen=True)
class Reply:
    """The downstream side's answer to the n-th request the proxy forwarded, then mutated."""

    index: int
    status: int
    steps: list[tuple[str, int]]


replies = st.lists(
    st.builds(
        Reply, st.integers(0, 3), st.sampled_from([100, 180, 183, 200, 302, 404, 486, 503, 603]), steps
    ),
    max_size=3,
)


# -- the fake network, as a UDP listener delivers -------------------------------------------------------------


@dataclass
class RawNetwork(FakeTransport):
    """A ``FakeTransport`` that takes raw octets in and keeps what the proxy sent that does not parse."""

    unparsable: list[tuple[bytes, str]] = field(default_factory=list)

    async def send_request(self, msg: Request, dest: Address) -> None:
        self._keep(msg.to_bytes(), dest=dest)

    async def send_response(self, msg: Response, flow: Any) -> None:
        self._keep(msg.to_bytes(), flow=flow)

    def _keep(self, data: bytes, dest: Address | None = None, flow: Any = None) -> None:
        try:
            parsed = parse_message_untrusted(data)
        except SIPError as exc:
            self.unparsable.append((data, str(exc)))
            return
        self._record(Sent(parsed, dest=dest, flow=flow))

    async def inject_raw(self, data: bytes, source: Address) -> None:
        flow = FakeFlow(source.transport, PROXY, source)
        try:
            msg = parse_message_untrusted(data)
        except SIPError as exc:
            if answerable_request(data):
                await self._send.send(Malformed(data, source, flow, exc))  # type: ignore[arg-type]
            return
        msg.source = source
        msg.flow = flow
        await self._send.send(msg)


class _Faults(logging.Handler):
    """Log records of errors a fault boundary caught (a traceback, or the faults logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.name == "trioproxy.faults":
            self.records.append(record)


@pytest.fixture(scope="module")
def holder() -> ScriptHolder:
    h = ScriptHolder()
    result = h.reload(DEFAULT_SCRIPT)
    assert result.ok, result.errors
    return h


@pytest.fixture(scope="module")
def faults() -> Iterator[_Faults]:
    handler = _Faults()
    logger = logging.getLogger("trioproxy")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _locate(uri: URI) -> list[Address]:
    host = uri.host.strip("[]")
    if host.replace(".", "").isdigit() or ":" in host:
        return [Address(uri.transport or "udp", host, uri.port or 5060)]
    return []


def _run(holder: ScriptHolder, messages: list[bytes], answers: list[Reply]) -> tuple[Proxy, RawNetwork]:
    net = RawNetwork()
    proxy = Proxy(net, LuaRouter(holder, Registrar(MemoryStore(), RegistrarPolicy())), timers=TIMERS,
                  locate=_locate, domains=["example.com"])  # fmt: skip

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            # bob is registered, so calls to him are forwarded (to CALLEE) and answered by the fuzzed side.
            register = fill(REQUESTS[1], "reg").replace(b"alice@127.0.0.2", b"bob@127.0.0.3")
            register = register.replace(b"<sip:alice@example.com>\r\n", b"<sip:bob@example.com>\r\n")
            await net.inject_raw(register, CALLEE)
            await trio.sleep(1.0)
            for data in messages:
                await net.inject_raw(data, CALLER)
                await trio.sleep(0.01)
            await trio.sleep(1.0)
            forwarded = [s for s in net.sent if s.dest is not None and isinstance(s.msg, Request)]
            for answer in answers:
                if answer.index < len(forwarded):
                    sent = forwarded[answer.index]
                    assert isinstance(sent.msg, Request) and sent.dest is not None
                    if sent.msg.method == "ACK":
                        continue
                    resp = make_response(
                        sent.msg, answer.status, to_tag="fz" if answer.status > 100 else None
                    )
                    await net.inject_raw(apply_steps(resp.to_bytes(), answer.steps), sent.dest)
                    await trio.sleep(0.01)
            await trio.sleep(RUN_OUT)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return proxy, net


def _verdict(proxy: Proxy, net: RawNetwork, faults: _Faults) -> None:
    caught = [f"{r.name}: {r.getMessage()}" for r in faults.records]
    faults.records.clear()
    assert not caught, f"internal errors caught by a fault boundary: {caught}"
    assert not net.unparsable, f"the proxy sent messages it cannot parse: {net.unparsable[:2]}"
    assert len(proxy.table) == 0, f"transactions left after {RUN_OUT}s: {proxy.table.statistics()}"


# A few milliseconds an example: about 15 s for both tests on a loaded 2-core machine.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)


@settings(FUZZ, max_examples=1200)
@given(messages=st.lists(mutated_requests(), min_size=1, max_size=3), answers=replies)
def test_mutated_requests_and_answers(holder: ScriptHolder, faults: _Faults, messages: list[bytes],
                                      answers: list[Reply]) -> None:  # fmt: skip
    proxy, net = _run(holder, messages, answers)
    _verdict(proxy, net, faults)


@settings(FUZZ, max_examples=400)
@given(messages=st.lists(mutated_responses(), min_size=1, max_size=3))
def test_mutated_stray_responses(holder: ScriptHolder, faults: _Faults, messages: list[bytes]) -> None:
    proxy, net = _run(holder, messages, [])
    _verdict(proxy, net, faults)
    # Strays are dropped (RFC 6026): nothing goes to the caller for them.
    assert not [s for s in net.sent if s.dest is None and s.msg.call_id.startswith("resp")]


def test_unmutated_seeds_go_through(holder: ScriptHolder, faults: _Faults) -> None:
    # The seeds are valid: the INVITE to the registered bob reaches him; everything ends cleanly.
    proxy, net = _run(holder, [fill(REQUESTS[0], "s1")], [Reply(0, 486, [])])
    _verdict(proxy, net, faults)
    assert net.requests_to(CALLEE, "INVITE"), [s.msg for s in net.sent]
    assert {r.status for r in net.responses_up() if r.status >= 200 and r.cseq.method == "INVITE"} == {486}


def test_mutations_are_pure_and_change_messages() -> None:
    seed = fill(REQUESTS[0], "p")
    for name, fn in MUTATIONS.items():
        outs = {fn(seed, random.Random(n)) for n in range(20)}
        assert {fn(seed, random.Random(n)) for n in range(20)} == outs, name  # same seed, same octets
        assert outs - {seed}, f"{name} never changed the message"
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert [mutate(seed, rng_a) for _ in range(50)] == [mutate(seed, rng_b) for _ in range(50)]
