"""Lua routing: sandboxed Lua 5.4 route scripts (Kamailio KEMI style), the KSR API, hot reload."""

from __future__ import annotations

from .holder import CheckResult, ReloadResult, ScriptHolder, check_script
from .htable import Htable, HtableStore
from .pv import get_pv, set_pv, unset_pv
from .script import (
    DEFAULT_INSTRUCTION_BUDGET,
    DEFAULT_MEMORY_LIMIT,
    KSR_CORE,
    KSR_MODULES,
    LuaScript,
    RouteError,
    RoutingStats,
    ScriptError,
)
from .services import ContactInfo, RouteServices
from .state import BranchTarget, RequestState

__all__ = [
    "DEFAULT_INSTRUCTION_BUDGET",
    "DEFAULT_MEMORY_LIMIT",
    "KSR_CORE",
    "KSR_MODULES",
    "BranchTarget",
    "CheckResult",
    "ContactInfo",
    "Htable",
    "HtableStore",
    "LuaScript",
    "ReloadResult",
    "RequestState",
    "RouteError",
    "RouteServices",
    "RoutingStats",
    "ScriptError",
    "ScriptHolder",
    "check_script",
    "get_pv",
    "set_pv",
    "unset_pv",
]
