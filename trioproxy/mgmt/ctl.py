"""``trioproxy ctl``: talk to a running proxy's management API.

    trioproxy ctl [--mgmt HOST:PORT] [--token T] [--json] COMMAND
        health | stats | metrics | reload | script
        registrations [AOR] [--offset N] [--limit N]
        dispatcher [list | reload]        destination sets and states; read the list again
        dialogs [--limit N]               tracked dialogs (KSR.dialog): counts by state, the dialogs
        trunks                            trunk registrations (KSR.uac) and their states
        unregister AOR [--contact URI]
        trace CALLID                      show what is known of a call
        trace (CALLID | --user USER) --on|--off    start or stop tracing a call or a user

``--mgmt`` defaults to $TRIOPROXY_MGMT or 127.0.0.1:9060 and ``--token`` to $TRIOPROXY_MGMT_TOKEN (so the
token need not show in the process list). Exit status: 0 on success, 1 when the proxy answered with an
error (a refused reload, an unknown call), 2 when it could not be reached or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, TextIO
from urllib.parse import quote, urlencode

from trioproxy.mgmt.client import MgmtClientError, request
from trioproxy.mgmt.server import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["add_ctl_arguments", "ctl_main", "parse_mgmt_address"]

_COMMANDS = ("health", "stats", "metrics", "reload", "script", "registrations", "unregister", "trace", "dialogs", "dispatcher", "trunks")


def add_ctl_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ctl's options and commands to ``parser`` (the ``ctl`` sub-parser of the CLI)."""
    parser.add_argument(
        "--mgmt",
        metavar="HOST:PORT",
        help=f"the management API (default: $TRIOPROXY_MGMT or {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    parser.add_argument("--token", help="bearer token (default: $TRIOPROXY_MGMT_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the JSON answer as it came")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default 5")
    sub = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    sub.add_parser("health", help="is the proxy up and ready")
    sub.add_parser("stats", help="counters of every layer")
    sub.add_parser("metrics", help="the Prometheus exposition")
    sub.add_parser("reload", help="reload the routing script")
    sub.add_parser("script", help="the loaded routing script")
    regs = sub.add_parser("registrations", help="list registrations (all, or one AOR)")
    regs.add_argument("aor", nargs="?", help="address of record, e.g. sip:alice@example.com")
    regs.add_argument("--offset", type=int, default=0)
    regs.add_argument("--limit", type=int, default=100)
    dlgs = sub.add_parser("dialogs", help="the tracked dialogs (KSR.dialog) and their counts")
    dlgs.add_argument("--limit", type=int, default=100)
    sub.add_parser("trunks", help="trunk registrations: registered, registering, failed (retry at), expires at")
    dsp = sub.add_parser("dispatcher", help="dispatcher sets and destination states, or reload the list")
    dsp.add_argument("action", choices=("list", "reload"), nargs="?", default="list")
    unreg = sub.add_parser("unregister", help="remove the bindings of an AOR (or one of them)")
    unreg.add_argument("aor")
    unreg.add_argument("--contact", help="remove only this contact URI")
    trace = sub.add_parser("trace", help="show a call's trace, or start/stop tracing a call or a user")
    trace.add_argument("call_id", nargs="?", metavar="CALLID")
    trace.add_argument("--user", help="trace the calls of this user (From or To user part)")
    switch = trace.add_mutually_exclusive_group()
    switch.add_argument("--on", dest="on", action="store_const", const=True, help="start tracing")
    switch.add_argument("--off", dest="on", action="store_const", const=False, help="stop tracing")


def parse_mgmt_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into ``(host, port)``."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def _plan(args: argparse.Namespace) -> tuple[str, str]:
    """The method and path of the command."""
    command = args.ctl_command
    if command in ("health", "stats", "metrics", "script"):
        return "GET", f"/{command}"
    if command == "reload":
        return "POST", "/reload"
    if command == "trunks":
        return "GET", "/trunks"
    if command == "registrations":
        query = {"offset": args.offset, "limit": args.limit}
        if args.aor:
            query = {"aor": args.aor, **query}
        return "GET", "/registrations?" + urlencode(query)
    if command == "dialogs":
        return "GET", "/dialogs?" + urlencode({"limit": args.limit})
    if command == "dispatcher":
        return ("POST", "/dispatcher/reload") if args.action == "reload" else ("GET", "/dispatcher")
    if command == "unregister":
        query = {"aor": args.aor} | ({"contact": args.contact} if args.contact else {})
        return "DELETE", "/registrations?" + urlencode(query)
    if command == "trace":
        if args.on is None:
            if args.user or not args.call_id:
                raise ValueError("trace: give a CALLID to show, or --on/--off with a CALLID or --user")
            return "GET", "/trace/" + quote(args.call_id, safe="")
        if bool(args.user) == bool(args.call_id):
            raise ValueError("trace --on/--off: give either a CALLID or --user, not both")
        key = {"user": args.user} if args.user else {"call_id": args.call_id}
        return "POST", "/trace?" + urlencode(key | {"on": 1 if args.on else 0})
    raise ValueError(f"unknown ctl command {command!r}")


def ctl_main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``trioproxy ctl`` command; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        host, port = parse_mgmt_address(args.mgmt or os.environ.get("TRIOPROXY_MGMT") or f"{DEFAULT_HOST}:{DEFAULT_PORT}")
        method, path = _plan(args)
    except ValueError as exc:
        print(f"trioproxy ctl: {exc}", file=err)
        return 2
    token = args.token or os.environ.get("TRIOPROXY_MGMT_TOKEN") or None
    try:
        status, body = request(host, port, method, path, token=token, timeout=args.timeout)
    except MgmtClientError as exc:
        print(f"trioproxy ctl: {exc}", file=err)
        return 2
    if args.json:
        print(body if isinstance(body, str) else json.dumps(body, indent=2), file=out)
    elif status < 400 or args.ctl_command in ("reload", "health"):
        _human(args.ctl_command, body, out)
    if status >= 400:
        message = body.get("error") if isinstance(body, dict) else None
        print(f"trioproxy ctl: {status}: {message or 'request failed'}", file=err)
        return 1
    return 0


def _human(command: str, body: Any, out: TextIO) -> None:
    if isinstance(body, str):
        out.write(body if body.endswith("\n") or not body else body + "\n")
        return
    if command == "reload" and isinstance(body, dict):
        where = body.get("file") or "script"
        if body.get("line"):
            where = f"{where}:{body['line']}"
        if body.get("ok"):
            print(f"reloaded {where}", file=out)
        else:
            print(f"reload failed: {where}: {body.get('error') or 'unknown error'} (the old script keeps running)", file=out)
        return
    if command == "trunks" and isinstance(body, dict) and isinstance(body.get("trunks"), list):
        for line in _trunk_lines(body["trunks"]):
            print(line, file=out)
        return
    for line in _render(body, 0):
        print(line, file=out)


def _when(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _trunk_lines(trunks: list[Any]) -> list[str]:
    """One line per trunk: l_uuid, state and when it changes next, account, registrar, last answer."""
    lines = []
    for t in trunks:
        if not isinstance(t, dict):
            continue
        state = str(t.get("state"))
        if state == "failed":
            state += f" (backoff until {_when(t.get('retry_at'))}, {t.get('failures_in_a_row')} in a row)"
        if t.get("expires_at") is not None:
            state += f", expires at {_when(t.get('expires_at'))}"
        last = f"{t.get('last_status')} {t.get('last_reason')}".strip() if t.get("last_status") else "-"
        lines.append(
            f"{t.get('l_uuid')}\t{state}\t{t.get('r_uri')} via {t.get('registrar')}\tlast: {last}\t[{t.get('source')}]"
        )
    return lines or ["no trunks"]


def _render(value: Any, indent: int) -> list[str]:
    """A readable, YAML-like rendering of a JSON value (nested objects indented, lists as items)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines += _render(item, indent + 1)
            elif isinstance(item, str) and "\n" in item:
                lines.append(f"{pad}{key}: |")
                lines += [f"{pad}  {ln}" for ln in item.replace("\r\n", "\n").rstrip("\n").split("\n")]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                sub = _render(item, indent + 1)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines += [f"{pad}- {ln}" if i == 0 else f"{pad}  {ln}" for i, ln in enumerate(_scalar(item).split("\n"))]
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return "(none)"
    return str(value)
