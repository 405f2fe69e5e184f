"""Location service: address-of-record -> bindings, with memory, sqlite and redis backends, and the
registrar (RFC 3261 10.3, RFC 3327, RFC 5626)."""

from __future__ import annotations

from .binding import AddressLike, Binding, aor_key, format_source, parse_source
from .manage import binding_info, list_bindings, remove_binding, run_purger, store_counts
from .registrar import Registrar, RegistrarPolicy, order_bindings, stages
from .store import Guard, LocationStore, MemoryStore, guard_blocks, open_store

__all__ = [
    "AddressLike",
    "Binding",
    "Guard",
    "LocationStore",
    "MemoryStore",
    "Registrar",
    "RegistrarPolicy",
    "aor_key",
    "binding_info",
    "format_source",
    "guard_blocks",
    "list_bindings",
    "open_store",
    "order_bindings",
    "parse_source",
    "remove_binding",
    "run_purger",
    "stages",
    "store_counts",
]
