"""``KSR.dispatcher``: load balancing over destination sets (Kamailio's dispatcher module, KEMI names).

- ``ds_select_dst(set, alg)``: ``$du`` becomes the selected destination of ``set`` by algorithm ``alg`` (0
  Call-ID hash, 1 From URI hash, 4 round robin shared by all calls, 8 priority order, 9 weight); the other
  active destinations are kept, in failover order, in ``$xavp(_dsdst_)`` (the current one first). 1, or -1
  when the set is unknown or has no active destination. ``ds_select_domain`` rewrites the R-URI's host and
  port instead; ``ds_select`` only keeps the list. The ``*_limit(set, alg, limit)`` forms keep at most
  ``limit`` destinations.
- ``ds_next_dst()`` / ``ds_next_domain()`` (a failure route): drop the current destination and use the next
  one still active: 1, or -1 when none is left.
- ``ds_mark_dst()``: the current destination becomes inactive (and probing when ``probing_mode`` is 1);
  ``ds_mark_dst_state(state)`` (also ``ds_mark_dst(state)``, the cfg form) sets Kamailio's state letters (``a``, ``i``, ``t``, ``d``, ``p``, e.g. ``"ip"``).
- ``ds_is_from_list(group)`` (-1: any set): 1 when the source IP and port of the message are a destination's
  (a destination with port 0 matches any port); ``ds_is_from_list_mode(group, mode)`` ignores the port when
  ``mode`` has bit 1; ``ds_is_from_lists()`` any set.
- ``ds_is_active(set)``, ``ds_list_exists(set)``, ``ds_reload()``.

Nothing here waits: selection reads the states the probes keep up to date in their own task.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trioproxy.dispatcher import Destination, current_dispatcher, parse_state
from trioproxy.dispatcher.model import DS_INACTIVE, DS_PROBING

from .ksr_core import _Mod
from .pv import get_pv

__all__ = ["XAVP", "Dispatcher_"]

XAVP = "_dsdst_"


def _int(state: Any, value: Any) -> int | None:
    if state is not None and isinstance(value, str) and value.startswith("$"):
        value = get_pv(state, value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class Dispatcher_(_Mod):
    """``KSR.dispatcher``."""

    # -- selection --

    def _select(self, setid: Any, alg: Any, limit: Any, mode: str) -> int:
        st = self._st
        ds = current_dispatcher()
        sid, algorithm, lim = _int(st, setid), _int(st, alg), _int(st, limit)
        if ds is None or sid is None or algorithm is None or lim is None:
            return -1
        req = st.req
        try:
            call_id = req.call_id
            from_uri = req.from_.uri
            from_key = f"{from_uri.user or ''}@{from_uri.host}:{from_uri.port or ''}"
        except Exception:  # a malformed header hashes as empty
            call_id, from_key = "", ""
        chosen = ds.sets.select(sid, algorithm, call_id, from_key)
        if lim > 0:
            chosen = chosen[:lim]
        if not chosen:
            st.xavps.pop(XAVP, None)
            return -1
        st.xavps[XAVP] = [
            {"uri": [d.uri], "grp": [d.setid], "attrs": [d.attrs], "duid": [d.duid]} for d in chosen
        ]
        self._use(chosen[0], mode)
        return 1

    def _use(self, dest: Destination, mode: str) -> None:
        st = self._st
        if mode == "dst":
            st.dst_uri = dest.uri
        elif mode == "domain":
            st.req.uri = dataclasses.replace(st.req.uri, host=dest.parsed.host, port=dest.parsed.port)

    def ds_select_dst(self, setid: Any, alg: Any) -> int:
        return self._select(setid, alg, 0, "dst")

    def ds_select_dst_limit(self, setid: Any, alg: Any, limit: Any) -> int:
        return self._select(setid, alg, limit, "dst")

    def ds_select_domain(self, setid: Any, alg: Any) -> int:
        return self._select(setid, alg, 0, "domain")

    def ds_select_domain_limit(self, setid: Any, alg: Any, limit: Any) -> int:
        return self._select(setid, alg, limit, "domain")

    def ds_select(self, setid: Any, alg: Any) -> int:
        return self._select(setid, alg, 0, "list")

    def ds_select_limit(self, setid: Any, alg: Any, limit: Any) -> int:
        return self._select(setid, alg, limit, "list")

    def _next(self, mode: str) -> int:
        st = self._st
        ds = current_dispatcher()
        items = st.xavps.get(XAVP) or []
        while len(items) > 1:
            items.pop(0)
            dest = self._dest(items[0]) if ds is not None else None
            if dest is not None and dest.active:
                self._use(dest, mode)
                return 1
        st.xavps.pop(XAVP, None)
        return -1

    def ds_next_dst(self) -> int:
        return self._next("dst")

    def ds_next_domain(self) -> int:
        return self._next("domain")

    # -- states --

    @staticmethod
    def _dest(item: dict[str, list[Any]]) -> Destination | None:
        ds = current_dispatcher()
        if ds is None:
            return None
        uri, grp = (item.get("uri") or [""])[0], _int(None, (item.get("grp") or [-1])[0])
        found = [d for d in ds.sets.sets.get(-1 if grp is None else grp, []) if d.uri == uri]
        return found[0] if found else None

    def _current(self) -> Destination | None:
        items = self._st.xavps.get(XAVP) or []
        return self._dest(items[0]) if items else None

    def ds_mark_dst(self, state: Any = None) -> int:
        if state is not None:  # Kamailio's cfg form ds_mark_dst("ip")
            return self.ds_mark_dst_state(state)
        ds = current_dispatcher()
        dest = self._current()
        if ds is None or dest is None:
            return -1
        bits = DS_INACTIVE | (DS_PROBING if ds.probing_mode == 1 else 0)
        ds.set_state(dest, bits, 0, "ds_mark_dst")
        return 1

    def ds_mark_dst_state(self, state: Any) -> int:
        ds = current_dispatcher()
        dest = self._current()
        change = parse_state(str(state))
        if ds is None or dest is None or change is None:
            return -1
        ds.set_state(dest, change[0], change[1], f"ds_mark_dst_state({state})")
        return 1

    # -- lists --

    def ds_is_from_list_mode(self, group: Any, mode: Any) -> int:
        st = self._st
        ds = current_dispatcher()
        grp, m = _int(st, group), _int(st, mode)
        src = st.msg.source
        if ds is None or grp is None or m is None or src is None:
            return -1
        found = ds.sets.from_list(src.host, 0 if m & 2 else src.port, grp)
        return 1 if found is not None else -1

    def ds_is_from_list(self, group: Any) -> int:
        return self.ds_is_from_list_mode(group, 0)

    def ds_is_from_lists(self) -> int:
        return self.ds_is_from_list_mode(-1, 0)

    def ds_is_active(self, setid: Any) -> int:
        ds = current_dispatcher()
        sid = _int(self._st, setid)
        if ds is None or sid is None:
            return -1
        return 1 if any(d.active for d in ds.sets.sets.get(sid, [])) else -1

    def ds_list_exists(self, setid: Any) -> int:
        ds = current_dispatcher()
        sid = _int(self._st, setid)
        return 1 if ds is not None and sid is not None and sid in ds.sets.sets else -1

    def ds_reload(self) -> int:
        ds = current_dispatcher()
        return 1 if ds is not None and ds.reload()["ok"] else -1
