"""``LuaScript``: one compiled, checked route script in its own sandboxed Lua 5.4 runtime, and the bridge
that runs its route functions as coroutines on the trio thread.

Each route call is a fresh Lua coroutine under an instruction budget. When the coroutine yields an effect
(``KSR.tm.t_relay``, ``KSR.registrar.lookup``, ``KSR.x.sleep``...), ``_run`` awaits the handler, then
resumes the coroutine with the result, so other routes run while one waits. Errors, budget overruns and
memory exhaustion end only that call, as a ``RouteError`` naming the script file and line.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa.lua54 as lua54

from .effects import EFFECT_SHIMS, END_EFFECTS, HANDLERS
from .htable import HtableStore
from .ksr_acc import Acc
from .ksr_auth import AUTH_EFFECT_SHIMS, AUTH_HANDLERS, Auth, AuthDb
from .ksr_core import Core, Hdr, KsrContext, Kx, Maxfwd, Pv, Siputils, Textops
from .ksr_dialog import DIALOG_HANDLERS, DIALOG_SHIMS, Dialog_
from .ksr_dispatcher import Dispatcher_
from .ksr_modules import Corex, Htable, Nathelper, Rr, Tm, Tmx
from .ksr_permissions import Permissions
from .ksr_pike import Pike, Pipelimit
from .ksr_rtpengine import RTPENGINE_HANDLERS, RTPENGINE_SHIMS
from .ksr_uac import Uac
from .prelude import PRELUDE
from .scan import Finding, scan_source
from .services import RouteServices
from .state import RequestState

__all__ = [
    "DEFAULT_INSTRUCTION_BUDGET",
    "DEFAULT_MEMORY_LIMIT",
    "KSR_CORE",
    "KSR_MODULES",
    "OPTIONAL_MODULES",
    "LuaScript",
    "RouteError",
    "RoutingStats",
    "ScriptError",
]

DEFAULT_INSTRUCTION_BUDGET = 1_000_000
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024
_log = logging.getLogger("trioproxy.routing.script")


class ScriptError(Exception):
    """A script that cannot be used: syntax error, failed check, ``ksr_init`` failure."""

    def __init__(self, file: str, line: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message
        self.errors = errors or [f"{file}:{line}: {message}"]


class RouteError(Exception):
    """A route call that failed; the proxy answers 500 unless ``reply_queued`` (a final reply was sent).

    ``kind`` is ``error``, ``budget`` (instruction budget exceeded), ``memory`` or ``missing`` (no such
    route function).
    """

    def __init__(self, file: str, line: int, cause: str, *, kind: str = "error", reply_queued: bool = False):
        super().__init__(f"{file}:{line}: {cause}")
        self.file = file
        self.line = line
        self.cause = cause
        self.kind = kind
        self.reply_queued = reply_queued


@dataclass(slots=True)
class RoutingStats:
    """Counters shared by the script versions of one holder."""

    reloads_ok: int = 0
    reloads_failed: int = 0
    script_errors: int = 0
    budget_overruns: int = 0
    memory_errors: int = 0
    route_calls: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {k: getattr(self, k) for k in self.__slots__}


def _public(obj: object) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in dir(obj) if not n.startswith("_")}


_PLAIN = (str, int, float, type(None))


def _check_args(where: str, args: tuple[Any, ...]) -> None:
    # Only strings, numbers, booleans and nil cross into Python: str() of a Lua table would run its
    # __tostring metamethod on the runtime's main thread, outside the route's instruction budget.
    for a in args:
        if not isinstance(a, _PLAIN):
            raise TypeError(f"{where}: arguments must be strings, numbers, booleans or nil")


# Most KSR calls a traced request records (GET /trace/<call-id>); the rest are counted, not kept.
MAX_TRACED_CALLS = 200


def _guarded(name: str, fn: Callable[..., Any], ctx: KsrContext) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        for a in args:
            if not isinstance(a, _PLAIN):
                _check_args(name, args)
        result = fn(*args)
        st = ctx.state
        if st is not None and st.trace is not None and len(st.trace) < MAX_TRACED_CALLS:
            st.trace.append((name, args, result))
        return result

    return call


def _table(lua: Any, prefix: str, funcs: dict[str, Any], ctx: KsrContext) -> Any:
    return lua.table_from({n: _guarded(f"{prefix}{n}", f, ctx) for n, f in funcs.items()})


_MODULE_CLASSES: dict[str, type] = {
    "pv": Pv, "hdr": Hdr, "textops": Textops, "siputils": Siputils, "maxfwd": Maxfwd, "rr": Rr, "tm": Tm,
    "tmx": Tmx, "corex": Corex, "htable": Htable, "nathelper": Nathelper,
    "auth": Auth, "auth_db": AuthDb, "permissions": Permissions, "pike": Pike, "pipelimit": Pipelimit,
    "dialog": Dialog_, "acc": Acc,
    "uac": Uac, "dispatcher": Dispatcher_,
}  # fmt: skip
# Challenges send a reply: effects of their own, merged into the bridge's tables.
EFFECT_SHIMS.update(AUTH_EFFECT_SHIMS)
HANDLERS.update(AUTH_HANDLERS)
EFFECT_SHIMS["dialog"] = DIALOG_SHIMS  # dlg_bye sends BYEs
HANDLERS.update(DIALOG_HANDLERS)
# Modules present only when the proxy is configured for them (``modules=`` of ``LuaScript.load``): without
# it they are nil at run time, so ``if KSR.rtpengine then`` guards tell the truth. All their calls are effects.
OPTIONAL_MODULES: dict[str, dict[str, str]] = {"rtpengine": RTPENGINE_SHIMS}
HANDLERS.update(RTPENGINE_HANDLERS)


def _api_names() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    ctx = KsrContext("", HtableStore(), _log)
    core = set(_public(Core(ctx))) | set(EFFECT_SHIMS[""])
    mods: dict[str, set[str]] = {m: set(_public(cls(ctx))) for m, cls in _MODULE_CLASSES.items()}
    mods["kx"] = set(Kx(ctx).functions())
    for mod, fns in EFFECT_SHIMS.items():
        if mod:
            mods.setdefault(mod, set()).update(fns)
    return frozenset(core), {m: frozenset(f) for m, f in mods.items()}


KSR_CORE, KSR_MODULES = _api_names()


def _deny_attributes(obj: object, name: str, is_setting: bool) -> str:
    # Scripts never reach Python attributes: KSR is Lua tables of functions.
    raise AttributeError("access to Python attributes is not allowed")


def _route_code(v: Any) -> int:
    # Kamailio conventions: nil/true -> 1, false -> -1, numbers as they are.
    if v is None or v is True:
        return 1
    if v is False:
        return -1
    if isinstance(v, int | float):
        return int(v)
    return 1


def _clean(msg: str, name: str, line: int) -> str:
    found, rest = _split_lua_error(msg, name)
    return rest if found == line else msg


class LuaScript:
    """A loaded route script; build with ``LuaScript.load``."""

    def __init__(
        self,
        source: str,
        name: str,
        *,
        instruction_budget: int,
        memory_limit: int,
        htables: HtableStore,
        stats: RoutingStats,
        modules: frozenset[str] = frozenset(),
    ) -> None:
        # Use LuaScript.load: this only builds the runtime and compiles.
        self.name = name
        self.source = source
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()
        self.instruction_budget = instruction_budget
        self.memory_limit = memory_limit
        self.stats = stats
        self.warnings: list[str] = []
        self._ids = itertools.count(1)
        self._ctx = KsrContext(name, htables, logging.getLogger("trioproxy.routing.lua"))
        self._lua = lua54.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            max_memory=memory_limit,
            attribute_filter=_deny_attributes,
        )
        setup, self._start, self._resume, self._close, self._global_type = self._lua.execute(PRELUDE)
        lua = self._lua
        t = lua.table_from
        ctx = self._ctx
        raw: dict[str, Any] = {"_core": _table(lua, "KSR.", _public(Core(ctx)), ctx)}
        for mod, cls in _MODULE_CLASSES.items():
            raw[mod] = _table(lua, f"KSR.{mod}.", _public(cls(ctx)), ctx)
        raw["kx"] = _table(lua, "KSR.kx.", Kx(ctx).functions(), ctx)
        effects = {**EFFECT_SHIMS, **{m: OPTIONAL_MODULES[m] for m in sorted(modules)}}
        shims = t({mod: t(fns) for mod, fns in effects.items()})
        ok, err = _tuple2(setup(t(raw), shims, name, source))
        if not ok:
            line, msg = _split_lua_error(str(err), name)
            raise ScriptError(name, line, msg)

    @classmethod
    def load(
        cls,
        path_or_source: str | Path,
        *,
        name: str | None = None,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        htables: HtableStore | None = None,
        stats: RoutingStats | None = None,
        modules: frozenset[str] = frozenset(),
    ) -> LuaScript:
        """Compile and check a script: a path (when ``name`` is None) or source text named ``name``.

        Runs the top-level code and ``ksr_init()`` if defined. Raises ``ScriptError`` on a syntax error,
        an unknown KSR function, a t_on_* route name with no such function, a missing
        ``ksr_request_route``, or an error in the top-level code or ``ksr_init``. ``modules`` names the
        ``OPTIONAL_MODULES`` the proxy provides (e.g. ``rtpengine`` when it has instances).
        """
        unknown = set(modules) - set(OPTIONAL_MODULES)
        if unknown:
            raise ValueError(f"unknown optional modules: {sorted(unknown)}")
        if name is None:
            name = str(path_or_source)
            try:
                source = Path(path_or_source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ScriptError(name, 0, f"cannot read script: {e}") from None
        else:
            source = str(path_or_source)
        provided = {**KSR_MODULES, **{m: frozenset(OPTIONAL_MODULES[m]) for m in modules}}
        scan = scan_source(source, KSR_CORE, provided)
        errors = [f"{name}:{f.line}: {f.message}" for f in scan.errors]
        if errors:
            first = scan.errors[0]
            raise ScriptError(name, first.line, first.message, errors)
        script = cls(
            source,
            name,
            instruction_budget=instruction_budget,
            memory_limit=memory_limit,
            htables=htables or HtableStore(),
            stats=stats or RoutingStats(),
            modules=frozenset(modules),
        )
        script.warnings = [f"{name}:{f.line}: {f.message}" for f in scan.warnings]
        script._init_checks(scan.callbacks)
        return script

    def _init_checks(self, callbacks: list[tuple[str, str, int]]) -> None:
        self._run_sync(None, "top-level code")
        problems: list[Finding] = []
        for fn, route, line in callbacks:
            if self._global_type(route) != "function":
                problems.append(Finding(line, f'{fn}("{route}"): no function {route} in the script'))
        if self._global_type("ksr_request_route") != "function":
            problems.append(Finding(0, "the script does not define ksr_request_route"))
        if problems:
            errors = [f"{self.name}:{p.line}: {p.message}" for p in problems]
            raise ScriptError(self.name, problems[0].line, problems[0].message, errors)
        if self._global_type("ksr_init") == "function":
            self._run_sync("ksr_init", "ksr_init")

    def _run_sync(self, fname: str | None, what: str) -> None:
        # Top-level code and ksr_init run without a message and may not yield effects.
        cid = next(self._ids)
        try:
            res = _tuple(self._start(cid, fname, self.instruction_budget))
        except lua54.LuaError as e:
            raise ScriptError(self.name, 0, f"{what}: {e}") from None
        finally:
            self._close(cid)
        if res[0] == "effect":
            raise ScriptError(
                self.name, 0, f"{what}: KSR call needing the proxy ({res[1]}) is not allowed here"
            )
        if res[0] not in ("done", "missing"):
            line = int(res[1] or 0)
            raise ScriptError(self.name, line, f"{what}: {_clean(str(res[2]), self.name, line)}")

    def has_route(self, name: str) -> bool:
        """Whether the script defines global function ``name``."""
        return bool(self._global_type(name) == "function")

    @property
    def memory_used(self) -> int:
        """Bytes used by this script's Lua runtime."""
        return int(self._lua.get_memory_used())

    async def run_request_route(self, state: RequestState, services: RouteServices) -> int:
        """Run ``ksr_request_route``; its return code (0 after ``KSR.x.exit``/``drop``)."""
        return await self._run("ksr_request_route", state, services)

    async def run_reply_route(self, state: RequestState, services: RouteServices) -> int:
        """Run ``ksr_reply_route`` (1 when the script has none)."""
        if not self.has_route("ksr_reply_route"):
            return 1
        return await self._run("ksr_reply_route", state, services)

    async def run_failure_route(self, name: str, state: RequestState, services: RouteServices) -> int:
        """Run the failure route ``name`` (set by ``t_on_failure``)."""
        return await self._run(name, state, services)

    async def run_branch_route(self, name: str, state: RequestState, services: RouteServices) -> int:
        """Run the branch route ``name`` on one branch's state (``KSR.x.drop`` drops the branch)."""
        return await self._run(name, state, services)

    async def run_onreply_route(self, name: str, state: RequestState, services: RouteServices) -> int:
        """Run the reply route ``name`` (set by ``t_on_reply``) on a reply's state."""
        return await self._run(name, state, services)

    async def _run(self, fname: str, state: RequestState, services: RouteServices) -> int:
        ctx = self._ctx
        cid = next(self._ids)
        self.stats.route_calls += 1
        ctx.state, ctx.services = state, services
        try:
            res = _tuple(self._start(cid, fname, self.instruction_budget))
            while res[0] == "effect":
                effect, args = str(res[1]), res[2:]
                if effect in END_EFFECTS:
                    state.exited = True
                    state.dropped = state.dropped or effect == "drop"
                    return 0
                try:
                    _check_args(effect, args)
                    ok, value = True, await HANDLERS[effect](state, services, args)
                except Exception as e:  # the script sees it as an error raised by its KSR call
                    ok, value = False, f"{e}" or type(e).__name__
                if isinstance(value, list):
                    value = self._lua.table_from(value)
                ctx.state, ctx.services = state, services
                res = _tuple(self._resume(cid, ok, value))
        except lua54.LuaError as e:
            res = ("memory" if isinstance(e, lua54.LuaMemoryError) else "error", 0, str(e))
        finally:
            self._close(cid)
            if ctx.state is state:
                ctx.state, ctx.services = None, None
        kind = str(res[0])
        if kind == "done":
            return _route_code(res[1] if len(res) > 1 else None)
        line = int(res[1] or 0)
        cause = _clean(str(res[2]), self.name, line)
        if kind == "missing":
            cause = f"no route function {fname}"
        elif kind == "budget":
            self.stats.budget_overruns += 1
            cause = f"instruction budget of {self.instruction_budget} exceeded in {fname}"
        elif kind == "memory":
            self.stats.memory_errors += 1
            cause = f"memory limit of {self.memory_limit} bytes exceeded in {fname}"
        self.stats.script_errors += 1
        err = RouteError(self.name, line, cause, kind=kind, reply_queued=state.replied is not None)
        _log.warning("route error: %s", err)
        raise err


def _tuple(v: Any) -> tuple[Any, ...]:
    return v if isinstance(v, tuple) else (v,)


def _tuple2(v: Any) -> tuple[Any, Any]:
    t = _tuple(v)
    return t[0], (t[1] if len(t) > 1 else None)


def _split_lua_error(msg: str, name: str) -> tuple[int, str]:
    # Lua compile errors read "name:LINE: message"; a long name is shortened to "...<its tail>:LINE: message"
    # (LUA_IDSIZE), so accept that form too.
    m = _LUA_ERROR.match(msg)
    if m is not None:
        source, line, rest = m.group(1), m.group(2), m.group(3)
        if source == name or (source.startswith("...") and name.endswith(source[3:])):
            return int(line), rest.strip()
    return 0, msg


_LUA_ERROR = re.compile(r"(.*?):(\d+): (.*)", re.DOTALL)
