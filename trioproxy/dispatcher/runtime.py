"""The dispatcher of one ``serve()``: built from ``[dispatcher]`` (a list file) or the ``--db`` table, made
current for the routes, probed in a task of its own (the management API shows it: ``ProxyMgmtApp``).

``DispatcherRuntime.start(config.dispatcher, config.db.url)`` returns None when neither a list file nor a database is configured
(then ``KSR.dispatcher`` calls answer -1). A list that cannot be read stops the start with
``DispatcherError``/``OSError``: the operator asked for sets the proxy cannot have.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from trioproxy.db.schema import connect

from .model import Destination, DispatcherError, DispatcherSets, make_destination
from .service import Dispatcher, set_dispatcher

if TYPE_CHECKING:
    from trioproxy.proxy import Proxy

__all__ = ["DispatcherRuntime", "load_db"]

log = logging.getLogger("trioproxy.dispatcher")


def load_db(url: str) -> list[Destination]:
    """The rows of the database's ``dispatcher`` table (``DispatcherError`` naming a bad row's id)."""
    db = connect(url)
    try:
        rows = db.execute(
            "SELECT id, setid, destination, flags, priority, attrs FROM dispatcher ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    out = []
    for row_id, setid, dest, flags, priority, attrs in rows:
        try:
            out.append(make_destination(int(setid), str(dest), int(flags), int(priority), str(attrs or "")))
        except DispatcherError as exc:
            raise DispatcherError(0, f"dispatcher row {row_id}: {exc.message}") from None
    return out


class DispatcherRuntime:
    """The dispatcher of one proxy process and what it needs to run."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    @classmethod
    def start(cls, ds_config: Any, db_url: str = "") -> DispatcherRuntime | None:
        """From the configuration's ``[dispatcher]`` section (``trioproxy.config.DispatcherSection``) and
        ``db.url``."""
        settings: dict[str, Any] = {
            "ping_interval": ds_config.ping_interval, "probing_mode": ds_config.probing_mode,
            "ping_timeout": ds_config.ping_timeout, "ping_from": ds_config.ping_from,
            "ping_method": ds_config.ping_method, "ping_reply_codes": tuple(ds_config.ping_reply_codes),
        }  # fmt: skip
        if ds_config.list_file:
            dispatcher = Dispatcher.from_file(ds_config.list_file, **settings)
        elif db_url:
            url = db_url

            def load() -> list[Destination]:
                return load_db(url)

            dispatcher = Dispatcher(DispatcherSets.build(load()), loader=load, source="db", **settings)
        else:
            set_dispatcher(None)
            return None
        count = len(dispatcher.sets.destinations())
        log.info(
            "dispatcher: %d destinations in %d sets from %s",
            count,
            len(dispatcher.sets.sets),
            dispatcher.source,
        )
        set_dispatcher(dispatcher)  # serve() runs in its own trio.run: the routes' tasks inherit it
        return cls(dispatcher)

    async def run(self, proxy: Proxy) -> None:
        """Probe the destinations until cancelled (returns at once when ``ping_interval`` is 0)."""
        from .prober import Prober  # the proxy core is needed only to probe

        ds = self.dispatcher
        prober = Prober(proxy, ds.ping_from, ds.ping_method)
        await ds.run(prober.probe)

    def close(self) -> None:
        set_dispatcher(None)
