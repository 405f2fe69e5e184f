"""The operator database's schema: versioned, upgraded in place by ordered migrations.

The ``schema_version`` table holds one row, the version the file is at. ``migrate`` applies every
migration above it in order, each in its own transaction together with the new version number, so a file
is always at exactly one version (never half upgraded), and an older trioproxy refuses a newer file rather
than misreading it. docs/DB.md describes the tables.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import unquote, urlsplit

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaError", "connect", "migrate", "path_from_url", "version_of"]


class SchemaError(Exception):
    """The database cannot be used: a bad URL, or a schema newer than this trioproxy knows."""


# Migration N takes a file from version N-1 to version N. Never edit a released one: add the next.
MIGRATIONS: list[str] = [
    # 1: subscribers with an MD5 HA1, IP address groups.
    """
    CREATE TABLE subscriber (
        username TEXT NOT NULL,
        domain TEXT NOT NULL,
        ha1_md5 TEXT NOT NULL,
        PRIMARY KEY (username, domain)
    );
    CREATE TABLE address (
        id INTEGER PRIMARY KEY,
        grp INTEGER NOT NULL,
        cidr TEXT NOT NULL,
        port INTEGER NOT NULL DEFAULT 0,
        tag TEXT NOT NULL DEFAULT '',
        UNIQUE (grp, cidr, port)
    );
    """,
    # 2: SHA-256 HA1 (RFC 8760); rows from version 1 keep NULL there and authenticate with MD5 only until
    # their password is set again.
    """
    ALTER TABLE subscriber ADD COLUMN ha1_sha256 TEXT;
    CREATE INDEX address_grp ON address (grp);
    """,
    # 3: accounting (KSR.acc): transaction records and CDRs in acc, missed calls in missed_calls.
    """
    CREATE TABLE acc (
        id INTEGER PRIMARY KEY, type TEXT NOT NULL, time REAL NOT NULL, method TEXT NOT NULL DEFAULT '',
        from_tag TEXT NOT NULL DEFAULT '', to_tag TEXT NOT NULL DEFAULT '', call_id TEXT NOT NULL DEFAULT '',
        sip_code INTEGER NOT NULL DEFAULT 0, sip_reason TEXT NOT NULL DEFAULT '', from_uri TEXT NOT NULL DEFAULT '',
        to_uri TEXT NOT NULL DEFAULT '', src TEXT NOT NULL DEFAULT '', dst TEXT NOT NULL DEFAULT '',
        start_time REAL, answer_time REAL, end_time REAL, duration REAL, end_reason TEXT NOT NULL DEFAULT '',
        comment TEXT NOT NULL DEFAULT '', extra TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX acc_call_id ON acc (call_id);
    CREATE TABLE missed_calls (
        id INTEGER PRIMARY KEY, type TEXT NOT NULL, time REAL NOT NULL, method TEXT NOT NULL DEFAULT '',
        from_tag TEXT NOT NULL DEFAULT '', to_tag TEXT NOT NULL DEFAULT '', call_id TEXT NOT NULL DEFAULT '',
        sip_code INTEGER NOT NULL DEFAULT 0, sip_reason TEXT NOT NULL DEFAULT '', from_uri TEXT NOT NULL DEFAULT '',
        to_uri TEXT NOT NULL DEFAULT '', src TEXT NOT NULL DEFAULT '', dst TEXT NOT NULL DEFAULT '',
        start_time REAL, answer_time REAL, end_time REAL, duration REAL, end_reason TEXT NOT NULL DEFAULT '',
        comment TEXT NOT NULL DEFAULT '', extra TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 4: load-balancing destination sets (KSR.dispatcher), Kamailio's dispatcher table columns.
    """
    CREATE TABLE dispatcher (
        id INTEGER PRIMARY KEY, setid INTEGER NOT NULL DEFAULT 0, destination TEXT NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0, priority INTEGER NOT NULL DEFAULT 0, attrs TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT ''
    );
    """,
    # 5: trunk registrations (KSR.uac), Kamailio's uacreg table columns.
    """
    CREATE TABLE uacreg (
        id INTEGER PRIMARY KEY, l_uuid TEXT NOT NULL UNIQUE, l_username TEXT NOT NULL DEFAULT '',
        l_domain TEXT NOT NULL DEFAULT '', r_username TEXT NOT NULL DEFAULT '', r_domain TEXT NOT NULL DEFAULT '',
        realm TEXT NOT NULL DEFAULT '', auth_username TEXT NOT NULL DEFAULT '',
        auth_password TEXT NOT NULL DEFAULT '', auth_proxy TEXT NOT NULL DEFAULT '',
        expires INTEGER NOT NULL DEFAULT 3600, flags INTEGER NOT NULL DEFAULT 0,
        reg_delay INTEGER NOT NULL DEFAULT 0
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def path_from_url(url: str) -> str:
    """``sqlite:///abs/path.db`` -> ``/abs/path.db``; ``sqlite:rel.db`` -> ``rel.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise SchemaError(f"expected sqlite:///PATH, got {url!r}")
    if parts.netloc:
        raise SchemaError(f"sqlite URL takes no host: {url!r} (use sqlite:///path)")
    path = unquote(parts.path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if not path:
        raise SchemaError(f"sqlite URL has no path: {url!r}")
    return path


def version_of(db: sqlite3.Connection) -> int:
    """The file's schema version (0: empty, no tables yet)."""
    row = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    got = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(got[0] or 0)


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring ``db`` up to ``target`` (default: the newest); returns the version it is at now."""
    if target > SCHEMA_VERSION:
        raise SchemaError(f"no migration to version {target}")
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = version_of(db)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {current} is newer than this trioproxy ({SCHEMA_VERSION})"
        )
    for version in range(current + 1, target + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            if version_of(db) >= version:  # another process got there first
                db.execute("ROLLBACK")
                continue
            for statement in _statements(MIGRATIONS[version - 1]):
                db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return version_of(db)


def _statements(script: str) -> list[str]:
    # executescript would commit the open transaction; split instead (the migrations hold no ';' in text).
    return [s.strip() for s in script.split(";") if s.strip()]


def connect(url: str, *, upgrade: bool = True) -> sqlite3.Connection:
    """Open the database at ``url`` (created when missing) and migrate it to the newest schema."""
    try:
        db = sqlite3.connect(path_from_url(url), isolation_level=None, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as exc:
        raise SchemaError(f"cannot open {url}: {exc}") from None
    db.execute("PRAGMA journal_mode=WAL")
    if upgrade:
        migrate(db)
    return db
