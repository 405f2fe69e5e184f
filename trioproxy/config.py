"""trioproxy's configuration: a TOML file (or the embedded default) into frozen dataclasses.

Every error names the key (and the line of the file when it can be found) and is raised as ``ConfigError``;
the CLI prints it on one line and exits with status 2. Command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trioproxy.sip import parse_uri_untrusted

__all__ = [
    "DEFAULT_CONFIG_TOML",
    "Config",
    "ConfigError",
    "ListenSpec",
    "load_config",
    "parse_hostport",
    "parse_listen",
]

DEFAULT_CONFIG_TOML = """\
# trioproxy's embedded default configuration (`trioproxy config --dump` shows every key with its value).
[proxy]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
"""


class ConfigError(Exception):
    """A configuration problem, with the key it concerns (and the line, when known)."""

    def __init__(self, key: str, message: str, line: int | None = None, source: str | None = None) -> None:
        self.key, self.message, self.line, self.source = key, message, line, source
        where = f"{source}:{line}: " if source and line else (f"{source}: " if source else "")
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")


@dataclass(frozen=True, slots=True)
class ListenSpec:
    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (or just a host when a default port is given)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        port = default_port
    else:
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    if m.group(1):
        ipaddress.IPv6Address(host)
    return host, port


def parse_listen(text: str) -> ListenSpec:
    """``udp:HOST:PORT`` / ``tcp:[::1]:5060`` / ``tls:HOST:PORT`` (default port 5061) / ``ws:HOST:PORT`` /
    ``wss:HOST:PORT`` (WebSocket, RFC 7118; default ports 80 and 443)."""
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or transport not in _TRANSPORTS:
        raise ValueError(f"expected udp:HOST:PORT, tcp:HOST:PORT, tls:HOST:PORT, ws:HOST:PORT or wss:HOST:PORT, got {text!r}")
    host, port = parse_hostport(rest, _DEFAULT_PORTS[transport])
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"listen address must be an IP address, got {host!r}") from exc
    return ListenSpec(transport, host, port)


@dataclass(frozen=True, slots=True)
class ProxySection:
    listen: tuple[str, ...] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060")
    domains: tuple[str, ...] = ()  # names this proxy is responsible for (is_myself), besides its addresses
    record_route: bool = True
    next_hop: str = ""  # without a script: send everything to this URI ("" = to the Request-URI)
    # Without a script: fork every new request to these stages of target URIs, in order (serial forking),
    # each stage's targets in parallel. Empty: forward to the Request-URI (or next_hop).
    fork: tuple[tuple[str, ...], ...] = ()
    udp_queue: int = 4096  # received messages waiting for the dispatcher; beyond it UDP drops and counts
    tcp_idle_timeout: float = 300.0  # also WebSocket connections (answering pings counts as traffic)
    ws_ping_interval: float = 30.0  # seconds of silence from a WebSocket peer before the proxy pings it (0: never)
    drain_time: float = 30.0  # on SIGTERM: seconds to let requests in flight finish before exiting
    gc_full_interval: float = 600.0  # seconds between full garbage collections (0: never); see server.tune_gc
    workers: int = 0  # worker processes sharing the SIP ports (0: one per core, os.cpu_count(); see workers.py)
    # Each worker's own port (its Via and Record-Route): 0 picks free ports at start; N > 0 gives listener k
    # (in listen order) of worker i the port N + k * workers + i.
    worker_port_base: int = 0


@dataclass(frozen=True, slots=True)
class TimersSection:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0


@dataclass(frozen=True, slots=True)
class DnsSection:
    nameservers: tuple[str, ...] = ()  # "HOST:PORT" (port 53 if omitted); empty: /etc/resolv.conf
    timeout: float = 1.0  # seconds per query to one server
    lifetime: float = 2.0  # seconds for a whole lookup (NAPTR, SRV, A/AAAA) before the branch fails
    cache_size: int = 4096
    negative_ttl: float = 30.0  # for negative answers without an SOA
    prefer_ipv6: bool = False
    use_ipv6: bool = True
    blocklist_time: float = 60.0  # seconds a destination that failed is skipped (0: no blocklist)


@dataclass(frozen=True, slots=True)
class RoutingSection:
    # "default": the embedded default script (registrar, location, relay, failure route);
    # "none": no script (built-in registrar and forwarding, see proxy.fork / proxy.next_hop); else a path.
    script: str = "default"
    instruction_budget: int = 1_000_000  # Lua instructions per route call
    memory_limit_mb: int = 64  # memory of one script's Lua runtime
    watch: bool = True  # reload when the script file changes (also on SIGHUP and `trioproxy ctl reload`)


@dataclass(frozen=True, slots=True)
class LocationSection:
    url: str = "memory:"  # memory: | sqlite:///path/location.db | redis://host:port/db
    purge_interval: float = 60.0  # seconds between background purges of expired bindings


@dataclass(frozen=True, slots=True)
class RegistrarSection:
    # Without a script: answer REGISTER for our domains and fork requests to registered users by q.
    enabled: bool = True
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 86400
    max_contacts: int = 0  # per address-of-record; 0: unlimited
    on_too_many: str = "reject"  # or "drop_oldest"
    path: str = "strict"  # Path without "Supported: path": "strict" answers 420, "lenient" ignores it


@dataclass(frozen=True, slots=True)
class DbSection:
    url: str = ""  # operator tables (subscribers, address groups): sqlite:///PATH; "" for none (docs/DB.md)
    refresh_interval: float = 1.0  # seconds between checks for changes made while running


@dataclass(frozen=True, slots=True)
class AuthSection:
    nonce_expires: float = 300.0  # seconds a digest nonce is accepted; later ones get stale=true
    secret: str = ""  # key signing the nonces (share it between instances); "" for a random one per start
    nonce_count_memory: int = 100_000  # nonces whose last nonce-count is remembered (replay protection)
    # Challenges offered, in this order, one header each (RFC 8760: SHA-256 first). Clients that answer only
    # the first challenge and know only MD5 (SIPp 3.6) need MD5 first.
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")


@dataclass(frozen=True, slots=True)
class PikeSection:
    # Flood protection (docs/LIMITS.md), Kamailio's pike: per-source request rate over a sliding window.
    enabled: bool = False  # check every request at the ingress (else only KSR.pike.* calls count)
    sampling_time_unit: float = 2.0  # seconds of the window
    reqs_density_per_unit: int = 30  # requests per window beyond which a source floods
    remove_latency: float = 120.0  # seconds after which an idle source is forgotten
    block_time: float = 300.0  # seconds a flooding source stays blocked
    action: str = "drop"  # what a blocked source's requests get: "drop" or "503" (with Retry-After)
    trusted: tuple[str, ...] = ()  # CIDRs never counted or blocked
    max_sources: int = 10_000  # sources tracked at once (the least recently seen evicted)
    auth_failures: int = 0  # failed digest authentications within auth_window that block a source (0: off)
    auth_window: float = 60.0


@dataclass(frozen=True, slots=True)
class LimitsSection:
    # Bounds on what peers may make the proxy hold (docs/LIMITS.md); 0 means no limit where noted.
    udp_max_message_size: int = 65535  # bytes; larger datagrams are dropped unparsed
    tcp_max_message_size: int = 65535  # bytes of one framed message (beyond: the connection closes)
    max_headers: int = 128  # header lines per message (beyond: 400)
    max_line_length: int = 8192  # characters per header line or start line (beyond: 400/414)
    max_transactions: int = 0  # requests being handled at once (0: no limit); beyond: 503 + Retry-After
    max_transactions_per_source: int = 0  # the same per source IP (0: no limit)
    retry_after: int = 5  # seconds, in the 503 of the two limits above
    tcp_max_connections: int = 10_000  # TCP connections at once (accepted and opened)
    tcp_max_connections_per_source: int = 1000  # accepted TCP connections at once from one IP (0: no limit)
    tcp_message_timeout: float = 20.0  # seconds a stream may hold an unfinished message (0: no limit)
    max_breadth: int = 60  # RFC 5393: parallel branches when a request has no Max-Breadth (0: off)
    ratelimit_interval: float = 10.0  # seconds of the window of KSR.pipelimit pipes


@dataclass(frozen=True, slots=True)
class OverloadSection:
    # Shedding new requests when the proxy falls behind (docs/LIMITS.md, "Overload").
    enabled: bool = True
    lag_high: float = 0.1  # seconds of event-loop or queue lag shedding holds the proxy at (at or above: shed)
    lag_low: float = 0.03  # seconds of lag at or below which shedding eases off fast
    action: str = "503"  # "503" (with Retry-After) or "drop"
    retry_after: int = 2  # seconds, in the 503
    probe_interval: float = 0.01  # seconds between two lag measurements


@dataclass(frozen=True, slots=True)
class HtableSection:
    # [htable.NAME]: a KSR.htable table declared up front.
    autoexpire: float = 0.0  # seconds an entry lives (0: forever)
    updateexpire: bool = True  # a write restarts the entry's expiry (false: counters expire on time)
    size: int = 100_000  # entries at most (the oldest dropped first)


@dataclass(frozen=True, slots=True)
class TlsSection:
    # TLS listeners (tls:HOST:PORT) and outgoing TLS (sips: and transport=tls next hops); PEM files.
    cert: str = ""  # certificate chain of the proxy (needed by a tls listener); reloaded on SIGHUP
    key: str = ""  # its private key
    ca: str = ""  # CA bundle verifying client certificates and servers' ("": the system's for servers)
    verify_client: bool = False  # clients of a tls listener must present a certificate signed by ca
    verify_server: bool = True  # check a server's certificate chain and name (SNI) when connecting
    min_version: str = "TLSv1.2"  # "TLSv1.2" or "TLSv1.3"
    handshake_timeout: float = 10.0  # seconds a handshake may take before the connection is closed


@dataclass(frozen=True, slots=True)
class RtpengineSection:
    # rtpengine ng control sockets for KSR.rtpengine: "udp:HOST:PORT" or "udp:HOST:PORT=WEIGHT" (docs/KSR.md).
    instances: tuple[str, ...] = ()  # none: KSR.rtpengine is nil in scripts
    timeout: float = 1.0  # seconds to wait for an answer before sending the command again
    retries: int = 2  # resends before the instance counts as dead and the next one is tried
    disable_time: float = 60.0  # seconds a dead instance is left out


@dataclass(frozen=True, slots=True)
class UacRegistration:
    # [[uac.registrations]]: one upstream trunk to register to (Kamailio's uacreg columns; docs/KSR.md).
    l_uuid: str = ""  # Contact user the provider sends calls to (KSR.uac.uac_reg_lookup maps it back)
    l_username: str = ""  # the local user those calls are for
    l_domain: str = ""
    r_username: str = ""  # the account at the provider
    r_domain: str = ""  # the provider's domain (the REGISTER's Request-URI)
    realm: str = ""  # digest realm ("": r_domain)
    auth_username: str = ""  # "": r_username
    auth_password: str = ""
    auth_proxy: str = ""  # where REGISTERs go, "sip:host:port" ("": r_domain located by DNS)
    expires: int = 3600


@dataclass(frozen=True, slots=True)
class UacSection:
    reg_retry_interval: float = 60.0  # seconds before retrying a failed registration (doubles, up to max)
    reg_retry_max: float = 600.0
    # [[uac.registrations]] entries (not a key of its own: see load_config).
    registrations: tuple[UacRegistration, ...] = ()


@dataclass(frozen=True, slots=True)
class DialogSection:
    # Dialog tracking (KSR.dialog): profiles a script may use, and how long a dialog may last.
    profiles_with_value: tuple[str, ...] = ()  # e.g. ["caller"]: set_dlg_profile("caller", "$fU")
    profiles_no_value: tuple[str, ...] = ()  # e.g. ["inbound"]
    max_lifetime: float = 43200.0  # seconds from the INVITE; then the proxy sends BYE to both sides
    check_interval: float = 1.0  # seconds between lifetime checks
    max_dialogs: int = 100_000  # dialogs tracked at once; beyond, dlg_manage returns -1
    store: str = "memory"  # memory | redis://HOST:PORT/DB[?prefix=NAME:]: profiles shared between instances


@dataclass(frozen=True, slots=True)
class AccSection:
    # Accounting (KSR.acc): JSON lines file (reopened on SIGUSR1 or SIGHUP) and --db rows.
    file: str = ""  # "" : records go to the log (info level)
    db: bool = False  # also write rows to the --db database (tables acc, missed_calls)
    cdr: bool = True  # a CDR when a managed dialog ends (answered or not)
    log_flag: int = 1  # message flags (KSR.setflag); -1 turns one off
    db_flag: int = 2
    log_missed_flag: int = 3
    db_missed_flag: int = 4
    failed_transaction_flag: int = 5
    extra: tuple[str, ...] = ()  # "name=$pv" fields added to every record, e.g. "ua=$hdr(User-Agent)"


@dataclass(frozen=True, slots=True)
class DispatcherSection:
    # Load balancing (KSR.dispatcher): destination sets and their OPTIONS health probes (docs/KSR.md).
    list_file: str = ""  # dispatcher.list ("setid destination flags priority attrs"); "": the --db table
    ping_interval: float = 0.0  # seconds between probe rounds; 0: no probing
    probing_mode: int = 0  # 1: probe every destination; 0: only those probing or inactive
    ping_timeout: float = 1.0  # seconds a probe waits for its answer; then the destination is inactive
    ping_from: str = "sip:dispatcher@localhost"
    ping_method: str = "OPTIONS"
    ping_reply_codes: tuple[int, ...] = ()  # statuses that count as up besides any 2xx


@dataclass(frozen=True, slots=True)
class MgmtSection:
    listen: str = "127.0.0.1:9060"  # the management HTTP API (HOST:PORT); "" turns it off
    token: str = ""  # when set, requests need "Authorization: Bearer TOKEN"


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxySection = field(default_factory=ProxySection)
    timers: TimersSection = field(default_factory=TimersSection)
    dns: DnsSection = field(default_factory=DnsSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    location: LocationSection = field(default_factory=LocationSection)
    registrar: RegistrarSection = field(default_factory=RegistrarSection)
    mgmt: MgmtSection = field(default_factory=MgmtSection)
    log: LogSection = field(default_factory=LogSection)
    db: DbSection = field(default_factory=DbSection)
    auth: AuthSection = field(default_factory=AuthSection)
    pike: PikeSection = field(default_factory=PikeSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    overload: OverloadSection = field(default_factory=OverloadSection)
    tls: TlsSection = field(default_factory=TlsSection)
    rtpengine: RtpengineSection = field(default_factory=RtpengineSection)
    uac: UacSection = field(default_factory=UacSection)
    dialog: DialogSection = field(default_factory=DialogSection)
    acc: AccSection = field(default_factory=AccSection)
    dispatcher: DispatcherSection = field(default_factory=DispatcherSection)
    # [htable.NAME] tables, by name (not a section of its own: see load_config).
    htable: tuple[tuple[str, HtableSection], ...] = ()

    @property
    def listens(self) -> list[ListenSpec]:
        return [parse_listen(x) for x in self.proxy.listen]


def _line_of(text: str | None, key: str) -> int | None:
    if not text:
        return None
    leaf = key.split(".")[-1].split("[")[0]
    section = key.split(".")[0] if "." in key else None
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
            continue
        if re.match(rf"{re.escape(leaf)}\s*=", stripped) and (section is None or current == section):
            return number
        if section is None and stripped.strip("[] ") == leaf:
            return number
    return None


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, args[0], key)
    raise ValueError(f"unsupported type {hint!r}")


def _build(cls: Any, data: dict[str, Any], prefix: str, text: str | None, source: str | None) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(full, "unknown key", _line_of(text, full), source)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(full, "expected a table", _line_of(text, full), source)
            kwargs[key] = _build(hint, value, f"{full}.", text, source)
            continue
        try:
            kwargs[key] = _convert(value, hint, full)
        except ValueError as exc:
            raise ConfigError(full, str(exc), _line_of(text, full), source) from None
    return cls(**kwargs)


def _check(config: Config, text: str | None, source: str | None) -> None:
    for i, item in enumerate(config.proxy.listen):
        try:
            parse_listen(item)
        except ValueError as exc:
            raise ConfigError(f"proxy.listen[{i}]", str(exc), _line_of(text, "proxy.listen"), source) from None
    if config.proxy.workers < 0:
        raise ConfigError("proxy.workers", "must be 0 (one per core) or more", _line_of(text, "proxy.workers"), source)
    if not 0 <= config.proxy.worker_port_base <= 65535:
        raise ConfigError(
            "proxy.worker_port_base", "must be 0 (free ports) or a port", _line_of(text, "proxy.worker_port_base"), source
        )
    if not config.proxy.listen:
        raise ConfigError("proxy.listen", "at least one listen address is needed", _line_of(text, "proxy.listen"), source)
    for i, stage in enumerate(config.proxy.fork):
        for j, item in enumerate(stage):
            try:
                parse_uri_untrusted(item)
            except ValueError as exc:
                raise ConfigError(f"proxy.fork[{i}][{j}]", f"bad URI {item!r}: {exc}", _line_of(text, "proxy.fork"), source) from None
    for i, item in enumerate(config.dns.nameservers):
        try:
            host, _port = parse_hostport(item, 53)
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ConfigError(f"dns.nameservers[{i}]", f"expected IP:PORT ({exc})", _line_of(text, "dns.nameservers"), source) from None
    for name in ("timeout", "lifetime"):
        if getattr(config.dns, name) <= 0:
            raise ConfigError(f"dns.{name}", "must be positive", _line_of(text, f"dns.{name}"), source)
    script = config.routing.script
    if script not in ("default", "none"):
        if not Path(script).is_file():
            raise ConfigError("routing.script", f"cannot read script file {script!r}", _line_of(text, "routing.script"), source)
    if (config.proxy.fork or config.proxy.next_hop) and script != "none":
        key = "proxy.fork" if config.proxy.fork else "proxy.next_hop"
        raise ConfigError(key, 'only used without a script: set routing.script = "none"', _line_of(text, key), source)
    if config.routing.instruction_budget < 1000:
        raise ConfigError("routing.instruction_budget", "must be at least 1000", _line_of(text, "routing.instruction_budget"), source)
    if config.routing.memory_limit_mb < 1:
        raise ConfigError("routing.memory_limit_mb", "must be at least 1", _line_of(text, "routing.memory_limit_mb"), source)
    url = config.location.url
    if not (url == "memory:" or url.startswith(("sqlite:", "redis://", "rediss://"))):
        raise ConfigError("location.url", f"expected memory:, sqlite:///PATH or redis://HOST:PORT/DB, got {url!r}", _line_of(text, "location.url"), source)
    if config.registrar.on_too_many not in ("reject", "drop_oldest"):
        raise ConfigError("registrar.on_too_many", "expected 'reject' or 'drop_oldest'", _line_of(text, "registrar.on_too_many"), source)
    if config.registrar.path not in ("strict", "lenient"):
        raise ConfigError("registrar.path", "expected 'strict' or 'lenient'", _line_of(text, "registrar.path"), source)
    if not 0 < config.registrar.min_expires <= config.registrar.default_expires <= config.registrar.max_expires:
        raise ConfigError("registrar", "need 0 < min_expires <= default_expires <= max_expires", _line_of(text, "registrar"), source)
    if config.mgmt.listen:
        try:
            host, _port = parse_hostport(config.mgmt.listen)
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ConfigError("mgmt.listen", f"expected IP:PORT ({exc})", _line_of(text, "mgmt.listen"), source) from None
    if config.log.level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError("log.level", f"unknown level {config.log.level!r}", _line_of(text, "log.level"), source)
    if config.log.format not in ("text", "json"):
        raise ConfigError("log.format", "expected 'text' or 'json'", _line_of(text, "log.format"), source)
    if config.db.url and not config.db.url.startswith("sqlite:"):
        raise ConfigError("db.url", f"expected sqlite:///PATH, got {config.db.url!r}", _line_of(text, "db.url"), source)
    for key, value in (("db.refresh_interval", config.db.refresh_interval), ("auth.nonce_expires", config.auth.nonce_expires),
                       ("auth.nonce_count_memory", config.auth.nonce_count_memory)):
        if value <= 0:
            raise ConfigError(key, "must be positive", _line_of(text, key), source)
    if not config.auth.algorithms or any(a not in ("SHA-256", "MD5") for a in config.auth.algorithms):
        raise ConfigError("auth.algorithms", 'expected a list of "SHA-256" and/or "MD5"', _line_of(text, "auth.algorithms"), source)
    _check_limits(config, text, source)
    _check_overload(config, text, source)
    _check_tls(config, text, source)
    _check_rtpengine(config, text, source)
    _check_dialog_acc(config, text, source)
    _check_dispatcher(config, text, source)
    for name in ("t1", "t2", "t4", "timer_c"):
        if getattr(config.timers, name) <= 0:
            raise ConfigError(f"timers.{name}", "must be positive", _line_of(text, f"timers.{name}"), source)


def _check_dispatcher(config: Config, text: str | None, source: str | None) -> None:
    ds = config.dispatcher
    problems = {
        "ping_interval": "must be 0 or positive" if ds.ping_interval < 0 else None,
        "ping_timeout": "must be positive" if ds.ping_timeout <= 0 else None,
        "probing_mode": "expected 0 or 1" if ds.probing_mode not in (0, 1) else None,
        "ping_method": "expected a SIP method token" if not re.fullmatch(r"[A-Za-z]+", ds.ping_method) else None,
        "ping_reply_codes": "expected statuses 100..699" if any(not 100 <= c <= 699 for c in ds.ping_reply_codes) else None,
    }
    try:
        parse_uri_untrusted(ds.ping_from)
    except ValueError:
        problems["ping_from"] = "not a SIP URI"
    for key, problem in problems.items():
        if problem is not None:
            raise ConfigError(f"dispatcher.{key}", problem, _line_of(text, f"dispatcher.{key}"), source)
    if ds.list_file:
        from trioproxy.dispatcher.model import DispatcherError, parse_list

        try:
            parse_list(Path(ds.list_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, DispatcherError) as exc:
            raise ConfigError("dispatcher.list_file", f"{ds.list_file}: {exc}", _line_of(text, "dispatcher.list_file"), source) from None


def _check_overload(config: Config, text: str | None, source: str | None) -> None:
    ov = config.overload
    if ov.action not in ("503", "drop"):
        raise ConfigError("overload.action", "expected '503' or 'drop'", _line_of(text, "overload.action"), source)
    if not 0 <= ov.lag_low <= ov.lag_high:
        raise ConfigError("overload", "need 0 <= lag_low <= lag_high", _line_of(text, "overload"), source)
    if ov.probe_interval <= 0 or ov.retry_after < 0:
        key = "overload.probe_interval" if ov.probe_interval <= 0 else "overload.retry_after"
        raise ConfigError(key, "must be positive", _line_of(text, key), source)


def _check_limits(config: Config, text: str | None, source: str | None) -> None:
    pike, limits = config.pike, config.limits
    if pike.action not in ("drop", "503"):
        raise ConfigError("pike.action", "expected 'drop' or '503'", _line_of(text, "pike.action"), source)
    for i, cidr in enumerate(pike.trusted):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"pike.trusted[{i}]", f"expected a CIDR ({exc})", _line_of(text, "pike.trusted"), source) from None
    positive = (
        ("pike.sampling_time_unit", pike.sampling_time_unit), ("pike.reqs_density_per_unit", pike.reqs_density_per_unit),
        ("pike.remove_latency", pike.remove_latency), ("pike.block_time", pike.block_time),
        ("pike.max_sources", pike.max_sources), ("pike.auth_window", pike.auth_window),
        ("limits.udp_max_message_size", limits.udp_max_message_size),
        ("limits.tcp_max_message_size", limits.tcp_max_message_size), ("limits.max_headers", limits.max_headers),
        ("limits.max_line_length", limits.max_line_length), ("limits.retry_after", limits.retry_after),
        ("limits.tcp_max_connections", limits.tcp_max_connections),
        ("limits.ratelimit_interval", limits.ratelimit_interval),
    )  # fmt: skip
    for key, value in positive:
        if value <= 0:
            raise ConfigError(key, "must be positive", _line_of(text, key), source)
    not_negative = (
        ("pike.auth_failures", pike.auth_failures), ("limits.max_transactions", limits.max_transactions),
        ("limits.max_transactions_per_source", limits.max_transactions_per_source),
        ("limits.tcp_max_connections_per_source", limits.tcp_max_connections_per_source),
        ("limits.tcp_message_timeout", limits.tcp_message_timeout), ("limits.max_breadth", limits.max_breadth),
        ("proxy.ws_ping_interval", config.proxy.ws_ping_interval),
    )  # fmt: skip
    for key, value in not_negative:
        if value < 0:
            raise ConfigError(key, "must not be negative", _line_of(text, key), source)
    if limits.udp_max_message_size > 65535:
        raise ConfigError("limits.udp_max_message_size", "at most 65535", _line_of(text, "limits.udp_max_message_size"), source)
    for name, table in config.htable:
        if table.autoexpire < 0 or table.size <= 0:
            key = f"htable.{name}"
            raise ConfigError(key, "autoexpire must not be negative and size must be positive", _line_of(text, key), source)


def _check_tls(config: Config, text: str | None, source: str | None) -> None:
    tls = config.tls
    if tls.min_version not in ("TLSv1.2", "TLSv1.3"):
        raise ConfigError("tls.min_version", "expected 'TLSv1.2' or 'TLSv1.3'", _line_of(text, "tls.min_version"), source)
    if tls.handshake_timeout <= 0:
        raise ConfigError("tls.handshake_timeout", "must be positive", _line_of(text, "tls.handshake_timeout"), source)
    if tls.verify_client and not tls.ca:
        raise ConfigError("tls.verify_client", "needs tls.ca (the CA that signs client certificates)", _line_of(text, "tls.verify_client"), source)
    if bool(tls.cert) != bool(tls.key):
        key = "tls.key" if tls.cert else "tls.cert"
        raise ConfigError(key, "tls.cert and tls.key go together", _line_of(text, key), source)
    if any(spec.transport in ("tls", "wss") for spec in config.listens) and not tls.cert:
        raise ConfigError("tls.cert", "a tls or wss listener needs tls.cert and tls.key (or --tls-cert/--tls-key)", _line_of(text, "proxy.listen"), source)
    for name in ("cert", "key", "ca"):
        path = getattr(tls, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"tls.{name}", f"cannot read {path!r}", _line_of(text, f"tls.{name}"), source)


def _check_dialog_acc(config: Config, text: str | None, source: str | None) -> None:
    for key, value in (("dialog.max_lifetime", config.dialog.max_lifetime),
                       ("dialog.check_interval", config.dialog.check_interval)):
        if value <= 0:
            raise ConfigError(key, "must be positive", _line_of(text, key), source)
    store = config.dialog.store
    if not (store == "memory" or store.startswith(("redis://", "rediss://"))):
        raise ConfigError("dialog.store", f"expected memory or redis://HOST:PORT/DB, got {store!r}",
                          _line_of(text, "dialog.store"), source)
    both = set(config.dialog.profiles_with_value) & set(config.dialog.profiles_no_value)
    if both:
        raise ConfigError("dialog.profiles_no_value", f"also declared with values: {sorted(both)}",
                          _line_of(text, "dialog.profiles_no_value"), source)
    for item in config.acc.extra:
        name, sep, pv = item.partition("=")
        if not sep or not name.strip() or not pv.strip().startswith("$"):
            raise ConfigError("acc.extra", f"expected NAME=$pv, got {item!r}", _line_of(text, "acc.extra"), source)
    if config.acc.db and not config.db.url:
        raise ConfigError("acc.db", "needs the --db database (db.url)", _line_of(text, "acc.db"), source)


def _check_rtpengine(config: Config, text: str | None, source: str | None) -> None:
    from trioproxy.rtpengine import parse_instance

    rtp = config.rtpengine
    for i, item in enumerate(rtp.instances):
        try:
            parse_instance(item)
        except ValueError as exc:
            raise ConfigError(f"rtpengine.instances[{i}]", str(exc), _line_of(text, "rtpengine.instances"), source) from None
    for name in ("timeout", "disable_time"):
        if getattr(rtp, name) <= 0:
            raise ConfigError(f"rtpengine.{name}", "must be positive", _line_of(text, f"rtpengine.{name}"), source)
    if rtp.retries < 0:
        raise ConfigError("rtpengine.retries", "must not be negative", _line_of(text, "rtpengine.retries"), source)


def _build_htables(data: Any, text: str | None, source: str | None) -> tuple[tuple[str, HtableSection], ...]:
    if not isinstance(data, dict):
        raise ConfigError("htable", "expected tables [htable.NAME]", _line_of(text, "htable"), source)
    out: list[tuple[str, HtableSection]] = []
    for name, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"htable.{name}", "expected a table", _line_of(text, f"htable.{name}"), source)
        out.append((name, _build(HtableSection, values, f"htable.{name}.", text, source)))
    return tuple(out)


def _build_uac(data: Any, text: str | None, source: str | None) -> UacSection:
    if not isinstance(data, dict):
        raise ConfigError("uac", "expected a table [uac]", _line_of(text, "uac"), source)
    entries = data.pop("registrations", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("uac.registrations", "expected [[uac.registrations]] tables", None, source)
    regs = tuple(_build(UacRegistration, e, f"uac.registrations[{i}].", text, source) for i, e in enumerate(entries))
    seen: set[str] = set()
    for i, reg in enumerate(regs):
        for key in ("l_uuid", "l_username", "l_domain", "r_username", "r_domain"):
            if not getattr(reg, key):
                raise ConfigError(f"uac.registrations[{i}].{key}", "required", None, source)
        if reg.l_uuid in seen:
            raise ConfigError(f"uac.registrations[{i}].l_uuid", f"{reg.l_uuid!r} used twice", None, source)
        seen.add(reg.l_uuid)
        if reg.expires <= 0:
            raise ConfigError(f"uac.registrations[{i}].expires", "must be positive", None, source)
        if reg.auth_proxy:
            try:
                parse_uri_untrusted(reg.auth_proxy)
            except Exception:
                raise ConfigError(f"uac.registrations[{i}].auth_proxy", "not a SIP URI", None, source) from None
    section: UacSection = _build(UacSection, data, "uac.", text, source)
    if section.reg_retry_interval <= 0 or section.reg_retry_max < section.reg_retry_interval:
        raise ConfigError("uac.reg_retry_interval", "must be positive and at most reg_retry_max", None, source)
    return dataclasses.replace(section, registrations=regs)


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read ``path`` (or the embedded default), apply ``overrides`` (section -> key -> value), validate."""
    source = str(path) if path is not None else "<default>"
    if path is None:
        text = DEFAULT_CONFIG_TOML
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read config file: {exc.strerror}", None, source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"TOML syntax: {exc}", None, source) from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    htables = _build_htables(data.pop("htable", {}), text, source)
    uac = _build_uac(data.pop("uac", {}), text, source)
    config: Config = _build(Config, data, "", text, source)
    config = dataclasses.replace(config, htable=htables, uac=uac)
    _check(config, text, source)
    return config


def dump_config(config: Config) -> str:
    """The effective configuration as TOML."""
    out: list[str] = []
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if f.name == "htable":
            for name, table in section:
                out.append(f"[htable.{name}]")
                out.extend(f"{sf.name} = {_toml_value(getattr(table, sf.name))}" for sf in dataclasses.fields(table))
                out.append("")
            continue
        out.append(f"[{f.name}]")
        for sf in dataclasses.fields(section):
            if f.name == "uac" and sf.name == "registrations":
                continue
            out.append(f"{sf.name} = {_toml_value(getattr(section, sf.name))}")
        out.append("")
        if f.name == "uac":
            for reg in section.registrations:
                out.append("[[uac.registrations]]")
                out.extend(f"{sf.name} = {_toml_value(getattr(reg, sf.name))}" for sf in dataclasses.fields(reg))
                out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
