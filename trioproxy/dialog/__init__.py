"""Dialog tracking (``KSR.dialog``): the dialog state machine, the tracker with its profiles, and the
service that runs them in the proxy (lifetime checks, BYEs sent by the proxy)."""

from __future__ import annotations

from .fsm import Dialog, DialogState, EndReason
from .tracker import DialogStore, DialogTracker

__all__ = ["Dialog", "DialogState", "DialogStore", "DialogTracker", "EndReason"]
