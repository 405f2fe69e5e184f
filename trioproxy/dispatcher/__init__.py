"""Load balancing to destination sets with health probes (Kamailio's dispatcher module).

``model`` holds the sans-IO part (the list format, states, selection algorithms), ``service`` the sets of a
running proxy (source, reload, probe rounds), ``prober`` the OPTIONS probes sent through the proxy.
``KSR.dispatcher`` (``trioproxy.routing.ksr_dispatcher``) is the script's view.
"""

from __future__ import annotations

from .model import (
    ALGORITHMS,
    DS_DISABLED,
    DS_INACTIVE,
    DS_PROBING,
    DS_TRYING,
    Destination,
    DispatcherError,
    DispatcherSets,
    make_destination,
    parse_list,
    parse_state,
)
from .service import Dispatcher, current_dispatcher, set_dispatcher, use_dispatcher

__all__ = [
    "ALGORITHMS",
    "DS_DISABLED",
    "DS_INACTIVE",
    "DS_PROBING",
    "DS_TRYING",
    "Destination",
    "Dispatcher",
    "DispatcherError",
    "DispatcherSets",
    "current_dispatcher",
    "make_destination",
    "parse_list",
    "parse_state",
    "set_dispatcher",
    "use_dispatcher",
]
