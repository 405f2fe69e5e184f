"""sqlite backend persistence: bindings survive a reopen and a SIGKILL right after the 200."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import trio

from trioproxy.location import Registrar, open_store
from trioproxy.sip import Request

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parents[2]


def register(contact: str, cseq: int = 1) -> Request:
    return Request.build(
        "REGISTER",
        "sip:example.com",
        [
            ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-p"),
            ("From", "<sip:alice@example.com>;tag=1"),
            ("To", "<sip:alice@example.com>"),
            ("Call-ID", "persist-1"),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", contact),
            ("Supported", "path"),
            ("Path", "<sip:edge.example.net;lr>"),
        ],
    )


async def test_bindings_survive_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/location.db"
    store = open_store(url)
    resp = await Registrar(store).save(register("<sip:alice@10.0.0.1>;q=0.7"), now=T0)
    assert resp.status == 200
    await store.close()

    reopened = open_store(url)
    try:
        [b] = await reopened.get("alice@example.com", T0 + 1)
        assert (b.contact, b.q, b.cseq, b.path, b.expires_at) == (
            "sip:alice@10.0.0.1", 0.7, 1, ("<sip:edge.example.net;lr>",), T0 + 3600,
        )  # fmt: skip
        # The stored CSeq still orders later requests after the restart.
        assert (
            await Registrar(reopened).save(register("<sip:alice@10.0.0.1>", cseq=1), now=T0)
        ).status == 500
    finally:
        await reopened.close()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import trio
    from trioproxy.location import Registrar, open_store
    from trioproxy.sip import Request

    async def main(url):
        store = open_store(url)
        registrar = Registrar(store)
        for i in range(20):
            req = Request.build("REGISTER", "sip:example.com", [
                ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-c%d" % i),
                ("From", "<sip:user%d@example.com>;tag=1" % i),
                ("To", "<sip:user%d@example.com>" % i),
                ("Call-ID", "kill-%d" % i),
                ("CSeq", "1 REGISTER"),
                ("Contact", "<sip:user%d@10.0.0.%d>" % (i, i)),
            ])
            resp = await registrar.save(req, now=1700000000.0)
            assert resp.status == 200, resp.status
        # The 200 exists: die at once, no close, no cleanup, no atexit.
        os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main, sys.argv[1])
    """
)


async def test_binding_survives_sigkill_after_200(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/location.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with trio.fail_after(60):
        proc = await trio.run_process(
            [sys.executable, "-c", _CHILD, url], cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True,
            check=False,
        )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    store = open_store(url)
    try:
        assert await store.counts(T0) == (20, 20)
        assert [b.contact for b in await store.get("user19@example.com", T0)] == ["sip:user19@10.0.0.19"]
    finally:
        await store.close()
