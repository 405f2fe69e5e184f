"""The operator database: migrations (a version 1 file upgraded in place), tables, the CLI, and the
running proxy's in-memory view refreshed when another process changes the file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from trioproxy.auth import ha1
from trioproxy.cli import main
from trioproxy.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    OperatorTables,
    SchemaError,
    add_address,
    add_user,
    connect,
    list_users,
    migrate,
    version_of,
)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_new_file_is_created_at_the_newest_version(tmp_path: Path) -> None:
    db = connect(_url(tmp_path / "op.db"))
    assert version_of(db) == SCHEMA_VERSION == len(MIGRATIONS)
    assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


def test_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    raw = sqlite3.connect(path, isolation_level=None)
    assert migrate(raw, target=1) == 1
    raw.execute(
        "INSERT INTO subscriber (username, domain, ha1_md5) VALUES (?, ?, ?)",
        ("old", "example.com", ha1("MD5", "old", "example.com", "pw")),
    )
    raw.execute("INSERT INTO address (grp, cidr, port, tag) VALUES (1, '10.0.0.0/8', 0, 'v1')")
    raw.close()
    db = connect(_url(path))
    assert version_of(db) == SCHEMA_VERSION
    [old] = list_users(db)
    assert (old.username, old.ha1_md5, old.ha1_sha256) == (
        "old",
        ha1("MD5", "old", "example.com", "pw"),
        None,
    )
    add_user(db, "old@example.com", "new-pw")  # setting the password again fills the SHA-256 HA1
    [old] = list_users(db)
    assert old.ha1_sha256 == ha1("SHA-256", "old", "example.com", "new-pw")
    assert db.execute("SELECT tag FROM address").fetchall() == [("v1",)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = connect(_url(tmp_path / "op.db"))
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(SchemaError, match="newer"):
        connect(_url(tmp_path / "op.db"))


def test_bad_urls_are_refused() -> None:
    for url in ("redis://x/1", "sqlite://host/x.db", "sqlite:"):
        with pytest.raises(SchemaError):
            connect(url)


def test_cli_manages_users_and_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _url(tmp_path / "op.db")
    assert main(["user", "add", "--db", url, "Alice@Example.COM", "pw"]) == 0
    assert main(["user", "list", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "Alice@example.com\trealm=example.com\tMD5,SHA-256" in out
    assert "pw" not in out.replace("MD5", "")
    row = sqlite3.connect(tmp_path / "op.db").execute("SELECT * FROM subscriber").fetchone()
    assert "pw" not in row and ha1("SHA-256", "Alice", "example.com", "pw") in row
    assert main(["user", "add", "--db", url, "no-domain", "pw"]) == 2
    assert main(["address", "add", "--db", url, "3", "192.0.2.7/24", "5060", "--tag", "gw"]) == 0
    assert main(["address", "list", "--db", url]) == 0
    assert "3\t192.0.2.0/24\t5060\tgw" in capsys.readouterr().out
    assert main(["address", "add", "--db", url, "3", "not-an-ip"]) == 2
    assert main(["address", "del", "--db", url, "3", "192.0.2.0/24"]) == 0
    assert main(["address", "del", "--db", url, "3", "192.0.2.0/24"]) == 1
    assert main(["user", "del", "--db", url, "Alice@example.com"]) == 0
    assert main(["user", "del", "--db", url, "Alice@example.com"]) == 1


async def test_running_view_follows_changes_from_another_connection(tmp_path: Path) -> None:
    url = _url(tmp_path / "op.db")
    tables = await OperatorTables.open(url)
    try:
        assert tables.snapshot.subscriber("bob", "example.com") is None
        assert not await tables.refresh()  # nothing changed: no re-read
        other = connect(url)
        add_user(other, "bob@example.com", "pw")
        add_address(other, 2, "127.0.0.0/8", 5070)
        other.close()
        assert await tables.refresh()
        snap = tables.snapshot
        assert snap.subscriber("bob", "EXAMPLE.com") is not None
        assert snap.match_address(2, "127.0.0.9", 5070) is not None
        assert snap.match_address(2, "127.0.0.9", 5071) is None
        assert snap.match_address(None, "10.0.0.1", 5070) is None
        assert snap.match_address(2, "garbage", 5070) is None
        with trio.move_on_after(0.05):
            await tables.watch(0.01)  # the loop keeps running and finds nothing new
        assert tables.reloads == 2
    finally:
        tables.close()
