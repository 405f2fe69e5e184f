"""The operator database: subscribers (digest HA1 values) and IP address groups in one sqlite file, with a
versioned schema (``schema.py``), table operations (``tables.py``) and the running proxy's in-memory view
refreshed on change (``cache.py``). docs/DB.md describes the tables."""

from __future__ import annotations

from .cache import OperatorTables
from .schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, connect, migrate, path_from_url, version_of
from .tables import (
    AddressEntry,
    Snapshot,
    Subscriber,
    add_address,
    add_user,
    del_address,
    del_user,
    list_addresses,
    list_users,
    load_snapshot,
    split_user,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AddressEntry",
    "OperatorTables",
    "SchemaError",
    "Snapshot",
    "Subscriber",
    "add_address",
    "add_user",
    "connect",
    "del_address",
    "del_user",
    "list_addresses",
    "list_users",
    "load_snapshot",
    "migrate",
    "path_from_url",
    "split_user",
    "version_of",
]
