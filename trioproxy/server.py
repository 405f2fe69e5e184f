"""``serve()``: wire the transports, the proxy core and the router into one trio program."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio
import watchfiles

from trioproxy import sdnotify
from trioproxy.acc import set_acc
from trioproxy.acc.setup import build_dialog_acc
from trioproxy.config import Config, ListenSpec, parse_hostport
from trioproxy.dialog.service import set_dialogs
from trioproxy.dispatcher.runtime import DispatcherRuntime
from trioproxy.faults import contain
from trioproxy.locate import Blocklist, Locator, ResolverConfig
from trioproxy.location import LocationStore, Registrar, RegistrarPolicy, open_store, run_purger
from trioproxy.logsetup import trace_filter, trace_message
from trioproxy.mgmt import MgmtServer
from trioproxy.operator import OperatorRuntime
from trioproxy.protection import Protection, build_htables, transport_config
from trioproxy.proxy import LocationRouter, Proxy, Router, StaticRouter, Target
from trioproxy.routing import ScriptError, ScriptHolder
from trioproxy.routing.ksr_rtpengine import set_rtpengine
from trioproxy.routing.router import LuaRouter
from trioproxy.rtpengine import RtpengineClient, parse_instance
from trioproxy.service import LoopLag, ProxyMgmtApp, reload_script
from trioproxy.sip import Request, Response, parse_uri_untrusted
from trioproxy.transaction import Timers
from trioproxy.transport import Listen, TLSContexts, TLSSettings, Transports
from trioproxy.uac import Trunk
from trioproxy.uac.client import UNREGISTER_WAIT, TrunkRegistry, set_uac
from trioproxy.uac.watch import TrunkTable

__all__ = ["build_router", "serve"]

log = logging.getLogger("trioproxy")
logging.getLogger("watchfiles").setLevel(logging.WARNING)


def build_registrar(config: Config, store: LocationStore) -> Registrar:
    r = config.registrar
    policy = RegistrarPolicy(
        default_expires=r.default_expires,
        min_expires=r.min_expires,
        max_expires=r.max_expires,
        max_contacts=r.max_contacts,
        on_too_many="drop_oldest" if r.on_too_many == "drop_oldest" else "reject",
        path_mode="lenient" if r.path == "lenient" else "strict",
    )
    return Registrar(store, policy)


def build_router(config: Config, registrar: Registrar | None = None) -> Router:
    """The router the configuration asks for (without a script)."""
    next_hop = parse_uri_untrusted(config.proxy.next_hop) if config.proxy.next_hop else None
    stages = [[Target(parse_uri_untrusted(u)) for u in stage] for stage in config.proxy.fork]
    if registrar is not None and config.registrar.enabled:
        return LocationRouter(registrar, next_hop=next_hop, stages=stages, record_route=config.proxy.record_route)
    return StaticRouter(next_hop=next_hop, stages=stages, record_route=config.proxy.record_route)


def build_tls(config: Config) -> TLSContexts | None:
    """The TLS contexts when a tls listener or a certificate is configured (else None: no TLS at all)."""
    t = config.tls
    if not t.cert and not any(spec.transport in ("tls", "wss") for spec in config.listens):
        return None
    settings = TLSSettings(
        cert=t.cert,
        key=t.key,
        ca=t.ca,
        verify_client=t.verify_client,
        verify_server=t.verify_server,
        min_version=t.min_version,
    )
    return TLSContexts(settings)


def build_locator(config: Config) -> Locator:
    """The RFC 3263 locator (resolver built once) with the destination blocklist."""
    dns = config.dns
    nameservers = [parse_hostport(x, 53) for x in dns.nameservers] or None
    resolver_config = ResolverConfig(
        nameservers=nameservers,
        timeout=dns.timeout,
        lifetime=dns.lifetime,
        cache_size=dns.cache_size,
        negative_ttl=dns.negative_ttl,
        prefer_ipv6=dns.prefer_ipv6,
        use_ipv6=dns.use_ipv6,
        # WebSocket next hops are never located: the proxy does not open WebSocket connections (RFC 7118).
        transports=frozenset(s.transport for s in config.listens if s.transport not in ("ws", "wss")),
    )
    blocklist = Blocklist(duration=dns.blocklist_time) if dns.blocklist_time > 0 else None
    return Locator(resolver_config, blocklist=blocklist)


_BACKGROUND_RESTART_PAUSE = 1.0  # seconds before a background task that failed starts again

DEFAULT_SCRIPT = Path(__file__).parent / "data" / "default.lua"


def script_path(config: Config) -> Path | None:
    """The route script the configuration names (None: no script)."""
    script = config.routing.script
    if script == "none":
        return None
    return DEFAULT_SCRIPT if script == "default" else Path(script).absolute()


def build_holder(config: Config) -> ScriptHolder:
    """Load the route script once; raises ``ScriptError`` (file, line, cause) when it does not pass."""
    path = script_path(config)
    assert path is not None
    holder = ScriptHolder(
        instruction_budget=config.routing.instruction_budget,
        memory_limit=config.routing.memory_limit_mb * 1024 * 1024,
        htables=build_htables(config),
        modules=frozenset({"rtpengine"}) if config.rtpengine.instances else frozenset(),
    )
    result = holder.reload(path)
    if not result.ok:
        raise ScriptError(str(path), result.line or 0, result.error or "; ".join(result.errors))
    for warning in result.warnings:
        log.warning("%s", warning)
    return holder


def build_rtpengine(config: Config) -> RtpengineClient | None:
    """The ng client of ``[rtpengine] instances`` (None when there are none: KSR.rtpengine is nil)."""
    rtp = config.rtpengine
    if not rtp.instances:
        return None
    instances = [parse_instance(item) for item in rtp.instances]
    return RtpengineClient(instances, timeout=rtp.timeout, retries=rtp.retries, disable_time=rtp.disable_time)


def build_uac(config: Config) -> TrunkRegistry | None:
    """The trunk registrations of ``[[uac.registrations]]`` and, with ``--db``, of its ``uacreg`` table
    (None when there is neither)."""
    u = config.uac
    trunks = [Trunk(**{f: getattr(r, f) for f in Trunk.__dataclass_fields__}) for r in u.registrations]
    if not trunks and not config.db.url:
        return None
    return TrunkRegistry(trunks, retry_interval=u.reg_retry_interval, retry_max=u.reg_retry_max)


def _touches(changes: set[tuple[watchfiles.Change, str]], target: str) -> bool:
    return any(os.path.abspath(p) == target for _change, p in changes)


async def watch_script(holder: ScriptHolder, target: str) -> None:
    """Reload the script when its file (an absolute path) changes; editors that replace the file count."""
    async for changes in watchfiles.awatch(os.path.dirname(target), debounce=300, step=100, rust_timeout=500):
        if _touches(changes, target):
            reload_script(holder, "file change")


def tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing the event loop under load.

    Requests free their state by reference counting (the proxy breaks its reference cycles when a request
    ends), so the young-generation collections find little and full collections find nothing: a full
    collection only walks every live call's objects, which at a few hundred calls per second takes
    hundreds of milliseconds, long enough for peers to retransmit. Startup objects are frozen out of the
    collector, automatic full collections are left out, and ``periodic_full_gc`` runs one every
    ``proxy.gc_full_interval`` seconds (0: never) so that stray cycles from libraries cannot accumulate.
    Young collections are rare (every 100,000 container allocations, a few hundred milliseconds of traffic at
    200 calls/s): with a call's state freed by reference counting they only walk what is still alive, so
    their cost per call falls with their number (about 100 us per call at 10,000, 30 us at 100,000, measured
    with scripts/bench_core.py) while each stays a pause of a few milliseconds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 1_000_000_000)


async def periodic_full_gc(interval: float) -> None:
    while True:
        await trio.sleep(interval)
        started = time.perf_counter()
        found = gc.collect()
        log.info("full garbage collection: %d objects freed in %.0f ms", found, (time.perf_counter() - started) * 1000)


async def serve(
    config: Config,
    *,
    router: Router | None = None,
    announce: Callable[[str], None] = print,
    own: Sequence[ListenSpec] = (),
    task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy until SIGINT/SIGTERM (or cancellation).

    ``own``: in a worker of ``trioproxy run --workers N`` (``trioproxy.workers``), its own listeners; the
    configured ones are then bound with SO_REUSEPORT, shared with the other workers."""
    listens = [Listen(s.transport, s.host, s.port) for s in config.listens]
    own_listens = [Listen(s.transport, s.host, s.port) for s in own]
    protection = Protection.start(config)
    set_rtpengine(build_rtpengine(config))  # for the tasks started from here on (the routes' effects)
    dialogs, acc = build_dialog_acc(config)
    set_dialogs(dialogs)
    set_acc(acc)
    uac = build_uac(config)
    set_uac(uac)  # KSR.uac of the routes
    trunk_table = TrunkTable(config.db.url, uac) if uac is not None and config.db.url else None
    if trunk_table is not None:
        trunk_table.load_sync()
    dispatcher = DispatcherRuntime.start(config.dispatcher, config.db.url)  # KSR.dispatcher of the routes
    tconfig = dataclasses.replace(
        transport_config(config), handshake_timeout=config.tls.handshake_timeout, reuse_port=bool(own_listens)
    )
    transports = Transports(listens, tconfig, gate=protection.gate, tls=build_tls(config), own=own_listens)
    timers = Timers(t1=config.timers.t1, t2=config.timers.t2, t4=config.timers.t4, timer_c=config.timers.timer_c)
    locator = build_locator(config)
    operator = OperatorRuntime.start(config)
    protection.watch_auth_failures(operator.service.failures)
    store = open_store(config.location.url)
    registrar = build_registrar(config, store)
    path = script_path(config)
    holder = build_holder(config) if path is not None and router is None else None
    if router is None:
        router = LuaRouter(holder, registrar, locator) if holder is not None else build_router(config, registrar)
    proxy = Proxy(
        transports,
        router,
        timers=timers,
        domains=config.proxy.domains,
        locate=locator.locate,
        blocklist=locator.blocklist,
    )
    protection.apply(proxy, transports)
    dialogs.proxy = proxy  # sends the BYEs of dlg_bye and of the lifetime
    tune_gc()
    lag = LoopLag()
    app = ProxyMgmtApp(proxy, transports, store, holder, locator, lag)
    app.protection = protection
    app.dialogs = dialogs
    app.uac = uac
    app.dispatcher = dispatcher.dispatcher if dispatcher is not None else None
    proxy.tracer = _Tracer()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(transports.serve)
            await nursery.start(proxy.run)
            nursery.start_soon(_background, "purger", run_purger, store, config.location.purge_interval)
            nursery.start_soon(_background, "operator_tables", operator.run)
            nursery.start_soon(_background, "loop_lag", lag.run)
            if own_listens:  # a worker: it drains when its supervisor is gone
                from trioproxy.workers import watch_supervisor

                nursery.start_soon(_background, "supervisor_watch", watch_supervisor)
            nursery.start_soon(_background, "dialogs", dialogs.run)
            nursery.start_soon(_background, "acc_db", acc.run)
            if config.proxy.gc_full_interval > 0:
                nursery.start_soon(_background, "gc", periodic_full_gc, config.proxy.gc_full_interval)
            nursery.start_soon(_background, "registration_counts", app.refresh_counts)
            if uac is not None:
                nursery.start_soon(_background, "uac", uac.run, proxy)
            if trunk_table is not None:
                nursery.start_soon(_background, "uacreg", trunk_table.watch, config.db.refresh_interval)
            if dispatcher is not None:
                nursery.start_soon(_background, "dispatcher_probes", dispatcher.run, proxy)
            if holder is not None and path is not None and config.routing.watch:
                nursery.start_soon(_background, "script_watch", watch_script, holder, str(path))
            mgmt_url = None
            if config.mgmt.listen:
                host, port = parse_hostport(config.mgmt.listen)
                mgmt = MgmtServer(app, host, port, token=config.mgmt.token or None)
                bound = await nursery.start(mgmt.serve)
                mgmt_url = f"http://{_hostport(host, bound)}"
            for address in transports.listen_addresses():
                announce(f"trioproxy listening on {address.transport}:{_hostport(address.host, address.port)}")
            if mgmt_url:
                announce(f"trioproxy management API on {mgmt_url}")
            if holder is not None:
                announce(f"trioproxy route script {path} sha256={(holder.sha256 or '')[:12]}")
            else:
                announce("trioproxy route script: none (built-in registrar and forwarding)")
            sdnotify.ready("listening")
            task_status.started(proxy)

            async def unregister_trunks() -> None:
                if uac is not None:
                    done = await uac.unregister_all(min(UNREGISTER_WAIT, config.proxy.drain_time))
                    log.info("trunks: %d registrations removed (Expires: 0)", done)

            async def drain_then_stop() -> None:
                async with trio.open_nursery() as stopping:  # the trunks unregister while calls finish
                    stopping.start_soon(unregister_trunks)
                    drained = await proxy.drain(config.proxy.drain_time)
                log.info("drained %s, exiting", "completely" if drained else "partly (drain time over)")
                nursery.cancel_scope.cancel()

            async for signum in signals:
                name = signal.Signals(signum).name
                if signum in (signal.SIGUSR1, signal.SIGHUP):
                    acc.reopen()  # logrotate's postrotate: a new accounting file
                if signum == signal.SIGUSR1:
                    continue
                if signum == signal.SIGHUP:
                    sdnotify.reloading()
                    if holder is not None:
                        reload_script(holder, "SIGHUP")
                    # New connections use the certificate read now; open ones keep theirs.
                    transports.reload_tls()
                    sdnotify.ready()
                    continue
                if proxy.draining:
                    log.info("received %s again, exiting now", name)
                    nursery.cancel_scope.cancel()
                    break
                log.info("received %s, draining for at most %.0f s", name, config.proxy.drain_time)
                sdnotify.stopping()
                nursery.start_soon(drain_then_stop)
    operator.close()
    if trunk_table is not None:
        trunk_table.close()
    protection.close()
    if dispatcher is not None:
        dispatcher.close()
    acc.close()
    await store.close()


async def _background(where: str, fn: Callable[..., Awaitable[None]], *args: object) -> None:
    """The boundary of a background task (purger, metrics refresh, script watch...): a fault is logged and
    counted and the task starts again after a pause; it never reaches the server's nursery."""
    while True:
        try:
            await fn(*args)
            return
        except Exception as exc:
            contain(where, exc)
        await trio.sleep(_BACKGROUND_RESTART_PAUSE)


class _Tracer:
    """The proxy's per-call message trace, switched on through the management API."""

    @property
    def active(self) -> bool:
        return trace_filter.active

    def message(self, direction: str, msg: Request | Response, peer: object) -> None:
        trace_message(direction, msg, peer)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
