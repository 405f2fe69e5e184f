"""The operator tables: subscribers (digest HA1 values, never passwords) and IP address groups.

Plain synchronous functions over one sqlite connection (the CLI calls them directly; the proxy reads a
``Snapshot`` of everything in a worker thread, see ``cache.py``).
"""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import dataclass, field

from trioproxy.auth.digest import ha1

__all__ = [
    "AddressEntry",
    "Snapshot",
    "Subscriber",
    "add_address",
    "add_user",
    "del_address",
    "del_user",
    "list_addresses",
    "list_users",
    "load_snapshot",
    "split_user",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscriber; the realm of its HA1 values is its domain."""

    username: str
    domain: str
    ha1_md5: str
    ha1_sha256: str | None


@dataclass(frozen=True, slots=True)
class AddressEntry:
    """One row of an address group: a network, a port (0: any) and a free-form tag."""

    group: int
    network: Network
    port: int = 0
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The tables as read at one moment, indexed for per-request lookups."""

    subscribers: dict[tuple[str, str], Subscriber] = field(default_factory=dict)  # (username, domain)
    addresses: tuple[AddressEntry, ...] = ()

    @property
    def domains(self) -> frozenset[str]:
        """The domains that have subscribers (the realms challenged by default)."""
        return frozenset(d for _u, d in self.subscribers)

    def subscriber(self, username: str, domain: str) -> Subscriber | None:
        """The subscriber ``username@domain`` (the domain compared case-insensitively)."""
        return self.subscribers.get((username, domain.lower()))

    def match_address(self, group: int | None, ip: str, port: int) -> AddressEntry | None:
        """The first entry (of ``group``, or of any group when None) covering ``ip`` and ``port``."""
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return None
        for entry in self.addresses:
            if group is not None and entry.group != group:
                continue
            if entry.network.version == addr.version and addr in entry.network and entry.port in (0, port):
                return entry
        return None


def split_user(text: str) -> tuple[str, str]:
    """``user@domain`` (a leading ``sip:`` is allowed) -> (user, lowercased domain)."""
    text = text.removeprefix("sip:")
    user, sep, domain = text.rpartition("@")
    if not sep or not user or not domain or any(c in text for c in ' \t\r\n:"<>'):
        raise ValueError(f"expected USER@DOMAIN, got {text!r}")
    return user, domain.lower()


def add_user(db: sqlite3.Connection, user_at_domain: str, password: str) -> Subscriber:
    """Add a subscriber or set its password; HA1 values for MD5 and SHA-256 with realm = domain."""
    user, domain = split_user(user_at_domain)
    sub = Subscriber(user, domain, ha1("MD5", user, domain, password), ha1("SHA-256", user, domain, password))
    db.execute(
        "INSERT INTO subscriber (username, domain, ha1_md5, ha1_sha256) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (username, domain) DO UPDATE SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256",
        (sub.username, sub.domain, sub.ha1_md5, sub.ha1_sha256),
    )
    return sub


def del_user(db: sqlite3.Connection, user_at_domain: str) -> bool:
    """Remove a subscriber; whether it existed."""
    user, domain = split_user(user_at_domain)
    return db.execute("DELETE FROM subscriber WHERE username = ? AND domain = ?", (user, domain)).rowcount > 0


def list_users(db: sqlite3.Connection) -> list[Subscriber]:
    """Every subscriber, by domain then user."""
    rows = db.execute(
        "SELECT username, domain, ha1_md5, ha1_sha256 FROM subscriber ORDER BY domain, username"
    ).fetchall()
    return [Subscriber(*row) for row in rows]


def _network(cidr: str) -> Network:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or CIDR network, got {cidr!r}") from None


def _port(port: int) -> int:
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port out of range: {port}")
    return int(port)


def add_address(db: sqlite3.Connection, group: int, cidr: str, port: int = 0, tag: str = "") -> AddressEntry:
    """Add a network to an address group (an existing row gets the new tag)."""
    entry = AddressEntry(int(group), _network(cidr), _port(port), tag)
    db.execute(
        "INSERT INTO address (grp, cidr, port, tag) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (grp, cidr, port) DO UPDATE SET tag = excluded.tag",
        (entry.group, str(entry.network), entry.port, entry.tag),
    )
    return entry


def del_address(db: sqlite3.Connection, group: int, cidr: str, port: int | None = None) -> int:
    """Remove a network from a group (every port when ``port`` is None); the number of rows removed."""
    net = str(_network(cidr))
    if port is None:
        return db.execute("DELETE FROM address WHERE grp = ? AND cidr = ?", (int(group), net)).rowcount
    return db.execute(
        "DELETE FROM address WHERE grp = ? AND cidr = ? AND port = ?", (int(group), net, _port(port))
    ).rowcount


def list_addresses(db: sqlite3.Connection) -> list[AddressEntry]:
    """Every address entry, by group then insertion."""
    out = []
    for grp, cidr, port, tag in db.execute("SELECT grp, cidr, port, tag FROM address ORDER BY grp, id"):
        try:
            out.append(AddressEntry(int(grp), _network(cidr), int(port), str(tag)))
        except ValueError:
            continue  # a row edited by hand into something unreadable is skipped, not fatal
    return out


def load_snapshot(db: sqlite3.Connection) -> Snapshot:
    """Read both tables."""
    subs = {(s.username, s.domain.lower()): s for s in list_users(db)}
    return Snapshot(subs, tuple(list_addresses(db)))
