"""Checking scripts offline and hot reload: build a new runtime, check it, swap one reference."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .htable import HtableStore
from .script import DEFAULT_INSTRUCTION_BUDGET, DEFAULT_MEMORY_LIMIT, LuaScript, RoutingStats, ScriptError

__all__ = ["CheckResult", "ReloadResult", "ScriptHolder", "check_script"]

_log = logging.getLogger("trioproxy.routing.reload")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of ``check_script``: errors and warnings as ``file:line: message``."""

    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """Outcome of ``ScriptHolder.reload``: ``ok`` when the new script is now active.

    ``line`` and ``error`` describe the first error (``errors`` lists them all as ``file:line: message``);
    ``at`` is the wall-clock time of the attempt.
    """

    ok: bool
    path: str
    sha256: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    line: int | None = None
    error: str | None = None
    at: float = 0.0


def _hash_file(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def check_script(
    path: str | Path,
    *,
    instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    modules: frozenset[str] = frozenset(),
) -> CheckResult:
    """Load ``path`` in a throwaway runtime with every load-time check (``trioproxy check SCRIPT``);
    ``modules``: the optional KSR modules the proxy would provide (``rtpengine``)."""
    try:
        script = LuaScript.load(
            path, instruction_budget=instruction_budget, memory_limit=memory_limit, modules=modules
        )
    except ScriptError as e:
        return CheckResult(False, list(e.errors), [], _hash_file(path))
    return CheckResult(True, [], list(script.warnings), script.sha256)


class ScriptHolder:
    """The active script of a proxy process.

    Requests read ``holder.script`` once when they start and keep that object, so a transaction's failure
    and reply routes run the version that created them. ``reload`` swaps the reference only when the new
    script loaded and passed its checks; otherwise the old one stays and the result says why.
    """

    def __init__(
        self,
        *,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        htables: HtableStore | None = None,
        modules: frozenset[str] = frozenset(),
    ) -> None:
        self.instruction_budget = instruction_budget
        self.modules = modules  # optional KSR modules provided to every version (rtpengine)
        self.memory_limit = memory_limit
        self.htables = htables or HtableStore()
        self.stats = RoutingStats()
        self.script: LuaScript | None = None
        self.path: str | None = None
        self.last_reload: ReloadResult | None = None
        self.loaded_at: float | None = None  # wall-clock time the active script was loaded

    @property
    def sha256(self) -> str | None:
        """Hash of the active script's source."""
        return self.script.sha256 if self.script is not None else None

    def current(self) -> LuaScript:
        """The active script (RuntimeError before the first successful load)."""
        if self.script is None:
            raise RuntimeError("no route script loaded")
        return self.script

    def reload(self, path: str | Path | None = None) -> ReloadResult:
        """Load ``path`` (default: the current path) in a new runtime; activate it if it passed."""
        target = str(path if path is not None else self.path or "")
        try:
            script = LuaScript.load(
                target,
                instruction_budget=self.instruction_budget,
                memory_limit=self.memory_limit,
                htables=self.htables,
                stats=self.stats,
                modules=self.modules,
            )
        except ScriptError as e:
            self.stats.reloads_failed += 1
            result = ReloadResult(
                False, target, _hash_file(target), list(e.errors), [], e.line, e.message, time.time()
            )
            _log.error("reload of %s failed, keeping %s: %s", target, self.path, "; ".join(e.errors))
        else:
            self.script, self.path = script, target
            self.loaded_at = time.time()
            self.stats.reloads_ok += 1
            result = ReloadResult(True, target, script.sha256, [], list(script.warnings), at=self.loaded_at)
            _log.info("loaded %s (sha256 %s)", target, script.sha256[:12])
        self.last_reload = result
        return result

    def statistics(self) -> dict[str, int | str | None]:
        """Counters and the active script's identity, for metrics and the management API."""
        out: dict[str, int | str | None] = dict(self.stats.as_dict())
        out["path"] = self.path
        out["sha256"] = self.sha256
        out["memory_used"] = self.script.memory_used if self.script is not None else 0
        return out
