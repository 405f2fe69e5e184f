"""Build the dialog and accounting services of a running proxy from its configuration, linked: every
managed dialog that ends gives its CDR to accounting."""

from __future__ import annotations

from typing import Any

from trioproxy.dialog import Dialog, DialogTracker
from trioproxy.dialog.redis_profiles import RedisProfiles
from trioproxy.dialog.service import DialogService

from .records import cdr_record
from .service import AccFlags, AccService

__all__ = ["build_dialog_acc"]


def build_dialog_acc(config: Any) -> tuple[DialogService, AccService]:
    """The services for ``config``'s ``[dialog]`` and ``[acc]`` (a ``trioproxy.config.Config``; the proxy is
    attached to the dialog service later)."""
    d, a = config.dialog, config.acc
    tracker = DialogTracker(
        profiles_with_value=d.profiles_with_value,
        profiles_no_value=d.profiles_no_value,
        max_lifetime=d.max_lifetime,
        max_dialogs=d.max_dialogs,
    )
    extra = tuple((n.strip(), pv.strip()) for n, _sep, pv in (item.partition("=") for item in a.extra))
    acc = AccService(
        file=a.file,
        db_url=config.db.url if a.db else "",
        flags=AccFlags(a.log_flag, a.db_flag, a.log_missed_flag, a.db_missed_flag, a.failed_transaction_flag),
        cdr=a.cdr,
        extra=extra,
    )

    def on_end(dialog: Dialog) -> None:
        if dialog.cdr:
            acc.on_cdr(cdr_record(dialog))

    tracker.listeners.append(on_end)
    shared = RedisProfiles.from_url(d.store) if d.store != "memory" else None
    if shared is not None:
        tracker.listeners.append(shared.on_end)  # an ended dialog leaves the shared profiles at once
    return DialogService(store=tracker, check_interval=d.check_interval, shared=shared), acc
