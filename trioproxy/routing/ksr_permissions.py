"""``KSR.permissions``: source addresses checked against the operator's address groups.

The groups come from the operator tables' in-memory snapshot (``trioproxy address add``); without a
database every check answers -1. A port of 0 in an entry matches any port.
"""

from __future__ import annotations

from .auth_service import current_auth_service
from .ksr_core import _Mod
from .pv import get_pv

__all__ = ["Permissions"]


class Permissions(_Mod):
    """``KSR.permissions``."""

    def _source(self) -> tuple[str, int] | None:
        src = self._st.msg.source
        return None if src is None else (src.host, src.port)

    def allow_source_address(self, group: int = 1) -> int:
        """1 when the request's source IP and port are in address group ``group``, else -1."""
        src = self._source()
        if src is None:
            return -1
        found = current_auth_service().snapshot.match_address(int(group), src[0], src[1])
        return 1 if found is not None else -1

    def allow_source_address_group(self) -> int:
        """The group id of the first entry matching the source IP and port, or -1."""
        src = self._source()
        if src is None:
            return -1
        found = current_auth_service().snapshot.match_address(None, src[0], src[1])
        return found.group if found is not None else -1

    def allow_address(self, group: int, ip: str, port: int) -> int:
        """1 when ``ip``:``port`` (pseudo-variables allowed, e.g. ``"$si"``) is in ``group``, else -1."""
        st = self._st
        ip_text = str(get_pv(st, ip) or "") if str(ip).startswith("$") else str(ip)
        port_value = get_pv(st, str(port)) if str(port).startswith("$") else port
        try:
            port_num = int(port_value or 0)
        except (TypeError, ValueError):
            return -1
        found = current_auth_service().snapshot.match_address(int(group), ip_text, port_num)
        return 1 if found is not None else -1
