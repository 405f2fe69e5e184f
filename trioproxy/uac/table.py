"""The ``uacreg`` table of the operator database (docs/DB.md): trunk registrations, Kamailio's columns.

Plain synchronous functions over one sqlite connection (``trioproxy trunk`` calls them directly; the
running proxy reads the rows in a worker thread, see ``watch.py``). A row with ``flags`` bit 1 set
(Kamailio's "disabled") or ``expires`` 0 is kept for ``uac_auth`` / ``uac_reg_lookup`` but never registered.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields

from trioproxy.sip import SIPError, parse_uri_untrusted

from .registration import Trunk

__all__ = ["FLAG_DISABLED", "TrunkRow", "add_trunk", "del_trunk", "list_trunks", "validate"]

FLAG_DISABLED = 1

_COLUMNS = (
    "l_uuid", "l_username", "l_domain", "r_username", "r_domain", "realm", "auth_username",
    "auth_password", "auth_proxy", "expires", "flags", "reg_delay",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TrunkRow:
    """One ``uacreg`` row: the trunk and the row's scheduling columns."""

    trunk: Trunk
    flags: int = 0
    reg_delay: int = 0  # seconds after start before the first REGISTER

    @property
    def registers(self) -> bool:
        """Whether the proxy registers this trunk (not disabled, a positive expiry)."""
        return not self.flags & FLAG_DISABLED and self.trunk.expires > 0


def validate(row: TrunkRow) -> TrunkRow:
    """``row`` itself, or ``ValueError`` naming what is wrong."""
    t = row.trunk
    for name in ("l_uuid", "r_username", "r_domain"):
        if not getattr(t, name):
            raise ValueError(f"{name} is required")
    for f in fields(Trunk):
        value = getattr(t, f.name)
        if isinstance(value, str) and any(c in value for c in "\r\n\0"):
            raise ValueError(f"{f.name} holds a line break")
    if any(c in t.l_uuid for c in ' \t@:;<>"'):
        raise ValueError(f"l_uuid {t.l_uuid!r} is not a SIP user part")
    if t.expires < 0 or row.reg_delay < 0 or row.flags < 0:
        raise ValueError("expires, flags and reg_delay must not be negative")
    if t.auth_proxy:
        try:
            parse_uri_untrusted(t.auth_proxy)
        except SIPError:
            raise ValueError(f"auth_proxy {t.auth_proxy!r} is not a SIP URI") from None
    return row


def add_trunk(db: sqlite3.Connection, row: TrunkRow) -> TrunkRow:
    """Add a trunk, or replace every column of the one with its ``l_uuid``."""
    validate(row)
    values = [getattr(row.trunk, c) for c in _COLUMNS[:10]] + [row.flags, row.reg_delay]
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    db.execute(
        f"INSERT INTO uacreg ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
        f"ON CONFLICT (l_uuid) DO UPDATE SET {updates}",
        values,
    )
    return row


def del_trunk(db: sqlite3.Connection, l_uuid: str) -> bool:
    """Remove a trunk; whether it existed."""
    return db.execute("DELETE FROM uacreg WHERE l_uuid = ?", (l_uuid,)).rowcount > 0


def list_trunks(db: sqlite3.Connection) -> list[TrunkRow]:
    """Every valid row, by id (a row edited by hand into something unusable is skipped, not fatal)."""
    out: list[TrunkRow] = []
    for values in db.execute(f"SELECT {', '.join(_COLUMNS)} FROM uacreg ORDER BY id"):
        try:
            t = [str(v or "") for v in values[:9]]
            trunk = Trunk(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], expires=int(values[9]))
            out.append(validate(TrunkRow(trunk, int(values[10]), int(values[11]))))
        except (ValueError, TypeError):
            continue
    return out
