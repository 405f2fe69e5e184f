"""The ``trioproxy`` command line: ``run``, ``config``, ``check``, ``test``, ``ctl``, ``reload``, ``user``,
``address``, ``parse``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import trio

from trioproxy import __version__
from trioproxy.cli_operator import add_operator_commands, operator_main
from trioproxy.config import ConfigError, dump_config, load_config, parse_listen
from trioproxy.db import SchemaError
from trioproxy.logsetup import setup_logging
from trioproxy.mgmt import add_ctl_arguments, ctl_main
from trioproxy.routing import ScriptError

__all__ = ["main"]

SAMPLE_INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trioproxy", description="A stateful SIP proxy on Trio, routed by Lua.")
    p.add_argument("--version", action="version", version=f"trioproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file (default: embedded)")
    run.add_argument(
        "--listen",
        action="append",
        metavar="TRANSPORT:HOST:PORT",
        help="listen on udp:HOST:PORT, tcp:HOST:PORT, tls:HOST:PORT, ws:HOST:PORT or wss:HOST:PORT (repeatable; IPv6 as udp:[::1]:5060); "
        "replaces the config's",
    )
    run.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM) for tls and wss listeners ([tls] cert)")
    run.add_argument("--tls-key", metavar="FILE", help="its private key (PEM) ([tls] key)")
    run.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA (PEM) that must sign client certificates (sets [tls] ca and verify_client); also verifies servers",
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    run.add_argument("--log-format", choices=["text", "json"], help="log lines for people (text) or machines")
    run.add_argument("--mgmt", metavar="HOST:PORT", help='management API address ("" turns it off)')
    run.add_argument("--next-hop", metavar="URI", help="without a script: send every request to this URI")
    run.add_argument(
        "--nameserver",
        action="append",
        metavar="HOST:PORT",
        help="DNS server to use instead of /etc/resolv.conf (repeatable)",
    )
    run.add_argument(
        "--script",
        metavar="FILE",
        help='route script (Lua); "default" for the embedded one, "none" for no script',
    )
    run.add_argument(
        "--location",
        metavar="URL",
        help="location service: memory:, sqlite:///PATH/location.db or redis://HOST:PORT/DB",
    )
    run.add_argument(
        "--db",
        metavar="URL",
        help="operator tables (subscribers, address groups): sqlite:///PATH (see trioproxy user/address)",
    )
    run.add_argument(
        "--rtpengine",
        action="append",
        metavar="udp:HOST:PORT[=WEIGHT]",
        help="rtpengine ng control socket for KSR.rtpengine (repeatable; replaces [rtpengine] instances)",
    )
    run.add_argument(
        "--dispatcher-list",
        metavar="FILE",
        help="destination sets for KSR.dispatcher in dispatcher.list format (replaces [dispatcher] list_file)",
    )
    run.add_argument("--timer-t1", type=float, metavar="SECONDS", help="RFC 3261 T1 (default 0.5)")
    run.add_argument("--timer-c", type=float, metavar="SECONDS", help="proxy INVITE Timer C (default 180)")
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the SIP ports ([proxy] workers; 0: one per core; 1: a single process)",
    )

    cfg = sub.add_parser("config", help="check or show a configuration")
    group = cfg.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", metavar="FILE", help="validate FILE and exit (status 2 on an error)")
    group.add_argument("--dump", action="store_true", help="print the effective configuration with defaults")
    cfg.add_argument("-c", "--config", metavar="FILE", help="with --dump: the file to read (default: embedded)")

    check = sub.add_parser("check", help="check a route script as a reload would (exit status 2 on an error)")
    check.add_argument("script", metavar="SCRIPT", help="the Lua route script")
    check.add_argument(
        "--rtpengine",
        action="append",
        metavar="udp:HOST:PORT",
        help="check as a proxy with rtpengine instances would run it (KSR.rtpengine present)",
    )

    test = sub.add_parser(
        "test",
        help="run route tests (pytest files using trioproxy.testing.RouteTest) on virtual time",
    )
    test.add_argument("paths", nargs="*", default=["tests/routes"], help="test files or folders")
    test.add_argument("-k", metavar="EXPR", help="only tests matching EXPR (as pytest -k)")

    ctl = sub.add_parser("ctl", help="talk to a running proxy's management API")
    add_ctl_arguments(ctl)

    reload = sub.add_parser("reload", help="reload the route script of a running proxy (same as ctl reload)")
    reload.add_argument("--mgmt", metavar="HOST:PORT", help="the management API (default 127.0.0.1:9060)")
    reload.add_argument("--token", help="bearer token")
    reload.add_argument("--json", action="store_true", help="print the JSON answer")
    reload.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")

    add_operator_commands(sub)

    parse = sub.add_parser("parse", help="parse a SIP message (a file, or a sample) and print what was read")
    parse.add_argument("file", nargs="?", help="file holding one SIP message (default: a sample INVITE)")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    proxy: dict[str, Any] = {}
    if args.listen:
        proxy["listen"] = list(args.listen)
    if args.next_hop:
        proxy["next_hop"] = args.next_hop
    if args.workers is not None:
        proxy["workers"] = args.workers
    out: dict[str, dict[str, Any]] = {}
    if proxy:
        out["proxy"] = proxy
    log: dict[str, Any] = {}
    if args.log_level:
        log["level"] = args.log_level
    if args.log_format:
        log["format"] = args.log_format
    if log:
        out["log"] = log
    if args.mgmt is not None:
        out["mgmt"] = {"listen": args.mgmt}
    if args.script:
        out["routing"] = {"script": args.script}
    if args.location:
        out["location"] = {"url": args.location}
    if args.nameserver:
        out["dns"] = {"nameservers": list(args.nameserver)}
    if args.db:
        out["db"] = {"url": args.db}
    if args.rtpengine:
        out["rtpengine"] = {"instances": list(args.rtpengine)}
    if getattr(args, "dispatcher_list", None):
        out["dispatcher"] = {"list_file": args.dispatcher_list}
    timers: dict[str, Any] = {}
    if args.timer_t1:
        timers["t1"] = args.timer_t1
    if args.timer_c:
        timers["timer_c"] = args.timer_c
    if timers:
        out["timers"] = timers
    tls: dict[str, Any] = {}
    if args.tls_cert:
        tls["cert"] = args.tls_cert
    if args.tls_key:
        tls["key"] = args.tls_key
    if args.tls_ca:
        tls["ca"] = args.tls_ca
        tls["verify_client"] = True
    if tls:
        out["tls"] = tls
    return out


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from trioproxy.server import serve
    from trioproxy.workers import WorkerRole, remove_orphaned_rundir, resolve_workers, run_supervisor

    if args.workers is not None and args.workers < 0:
        print("trioproxy: --workers: 0 (one per core) or more", file=sys.stderr)
        return 2
    role = WorkerRole.from_env()
    if args.listen:
        for item in args.listen:
            try:
                parse_listen(item)
            except ValueError as exc:
                print(f"trioproxy: --listen: {exc}", file=sys.stderr)
                return 2
    overrides = _overrides(args)
    if role is not None:  # a worker of a supervisor (trioproxy.workers): its management API and store
        overrides.setdefault("proxy", {})["workers"] = 1
        overrides["mgmt"] = {"listen": role.mgmt}
        if role.location is not None:
            overrides["location"] = {"url": role.location}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"trioproxy: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)

    def announce(line: str) -> None:
        print(line, flush=True)

    workers = resolve_workers(config.proxy.workers)
    if role is None and workers > 1:
        try:
            return run_supervisor(config, argv, workers, announce)
        except (OSError, ValueError) as exc:
            print(f"trioproxy: cannot start: {exc}", file=sys.stderr)
            return 1
    own = role.own_listens() if role is not None else []
    try:
        trio.run(lambda: serve(config, announce=announce, own=own))
        if role is not None:
            remove_orphaned_rundir(role)
    except ScriptError as exc:
        print(f"trioproxy: route script refused: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:
        print(f"trioproxy: operator database: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"trioproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # A socket that cannot be bound inside the service nursery arrives wrapped in a group.
        errors = group.subgroup(OSError)
        if errors is None:
            raise
        first: BaseException = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"trioproxy: cannot start: {first}", file=sys.stderr)
        return 1
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.check if args.check else args.config)
    except ConfigError as exc:
        print(f"trioproxy: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.check}: ok")
    else:
        print(dump_config(config), end="")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from trioproxy.routing import check_script

    modules = frozenset({"rtpengine"}) if args.rtpengine else frozenset()
    result = check_script(args.script, modules=modules)
    for line in result.errors:
        print(f"error: {line}")
    for line in result.warnings:
        print(f"warning: {line}")
    if result.ok:
        print(f"{args.script}: ok (sha256 {result.sha256[:12]})")
        return 0
    return 2


def _cmd_test(args: argparse.Namespace) -> int:
    try:
        import pytest
    except ImportError:
        print("trioproxy test: needs pytest and pytest-trio (pip install 'trioproxy[test]')", file=sys.stderr)
        return 2
    argv = [*args.paths, "-q", "-p", "pytest_trio", "-o", "trio_mode=true"]
    if args.k:
        argv += ["-k", args.k]
    return int(pytest.main(argv))


def _cmd_parse(args: argparse.Namespace) -> int:
    from trioproxy.sip import Request, SIPError, parse_message_untrusted

    data = SAMPLE_INVITE
    if args.file:
        with open(args.file, "rb") as f:
            data = f.read()
    try:
        msg = parse_message_untrusted(data)
    except SIPError as exc:
        print(f"not a valid SIP message: {exc.status} {exc.reason}")
        return 1
    if isinstance(msg, Request):
        print(f"request {msg.method} {msg.uri}")
    else:
        print(f"response {msg.status} {msg.reason}")
    print(f"  call-id {msg.call_id}; cseq {msg.cseq.seq} {msg.cseq.method}")
    for via in msg.vias:
        print(f"  via {via.transport} {via.host}:{via.port} branch={via.branch}")
    print(f"  from {msg.from_.uri} tag={msg.from_.tag}; to {msg.to.uri} tag={msg.to.tag}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(raw)
    if args.command == "run":
        return _cmd_run(args, raw)
    if args.command == "config":
        return _cmd_config(args)
    if args.command == "check":
        return _cmd_check(args)
    if args.command == "test":
        return _cmd_test(args)
    if args.command == "ctl":
        return ctl_main(args)
    if args.command in ("user", "address", "trunk"):
        return operator_main(args)
    if args.command == "reload":
        args.ctl_command = "reload"
        return ctl_main(args)
    return _cmd_parse(args)


if __name__ == "__main__":
    sys.exit(main())
