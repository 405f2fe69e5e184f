"""The in-process htable store: expiry per table with an explicit clock."""

from __future__ import annotations

import pytest

from trioproxy.routing import HtableStore


def test_expiry_per_table() -> None:
    now = [100.0]
    store = HtableStore({"short": 10, "forever": 0}, default_expire=30, clock=lambda: now[0])
    store.table("short").set("a", "x")
    store.table("forever").set("a", 1)
    store.table("auto").set("a", 2)
    assert store.names() == ["short", "forever", "auto"]
    now[0] = 109.9
    assert store.table("short").get("a") == "x"
    now[0] = 110.0
    assert store.table("short").get("a") is None
    assert store.table("auto").get("a") == 2
    now[0] = 130.0
    assert store.table("auto").get("a") is None
    assert store.table("forever").get("a") == 1


def test_write_resets_expiry_and_inc() -> None:
    now = [0.0]
    store = HtableStore({"t": 10}, clock=lambda: now[0])
    t = store.table("t")
    assert t.inc("n") == 1
    now[0] = 8
    assert t.inc("n") == 2
    now[0] = 16
    assert t.get("n") == 2
    now[0] = 18
    assert t.get("n") is None
    assert t.inc("n", -1) == -1


def test_match_remove_and_expire_now() -> None:
    now = [0.0]
    store = HtableStore({"t": 5}, clock=lambda: now[0])
    t = store.table("t")
    t.set("user:1", 1)
    t.set("ip:10.0.0.1", 1)
    assert t.match_name("sw", "user:") and t.match_name("re", r"^ip:10\.") and not t.match_name("eq", "x")
    assert t.match_name("ne", "user:1")
    assert t.remove("user:1") and not t.remove("user:1")
    assert len(t) == 1
    now[0] = 6
    assert t.expire_now() == 1 and len(t) == 0
    with pytest.raises(ValueError):
        t.match_name("??", "x")


def test_redeclare_changes_expiry() -> None:
    store = HtableStore(clock=lambda: 0.0)
    store.declare("t", 5)
    assert store.declare("t", 50).expire == 50
    assert store.table("t") is store.declare("t", 50)
