"""``trioproxy user``, ``trioproxy address`` and ``trioproxy trunk``: manage the operator tables (docs/DB.md).

    trioproxy user add --db sqlite:///var/lib/trioproxy/operator.db alice@example.com 's3cret'
    trioproxy user del --db URL alice@example.com
    trioproxy user list --db URL
    trioproxy address add --db URL 1 192.0.2.0/24 [5060] [--tag TAG]
    trioproxy address del --db URL 1 192.0.2.0/24 [PORT]
    trioproxy address list --db URL
    trioproxy trunk add --db URL L_UUID --l-user office@pbx.example --r-user pbx@trunk.example \
        [--password P] [--realm R] [--auth-username U] [--proxy sip:HOST:PORT] [--expires S] \
        [--flags F] [--reg-delay S]
    trioproxy trunk del --db URL L_UUID
    trioproxy trunk list --db URL

Subscriber passwords are never stored: ``user add`` keeps the MD5 and SHA-256 HA1 values with realm =
domain. Trunk passwords are (the proxy answers the provider's challenges with them): keep the file private. A
running proxy using the same file sees the change within ``db.refresh_interval`` seconds. Exit status 0
on success, 1 when there was nothing to delete, 2 on bad input or an unusable database.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

from trioproxy.cli_trunk import add_trunk_commands, report_removal, trunk_command
from trioproxy.db import (
    SchemaError,
    add_address,
    add_user,
    connect,
    del_address,
    del_user,
    list_addresses,
    list_users,
)

__all__ = ["add_operator_commands", "operator_main"]


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", required=True, help="the operator database, sqlite:///PATH")


def add_operator_commands(sub: Any) -> None:
    """Add the ``user`` and ``address`` subcommands to the CLI's subparsers."""
    user = sub.add_parser("user", help="manage subscribers (digest credentials) in the operator database")
    usub = user.add_subparsers(dest="op", required=True)
    add = usub.add_parser("add", help="add a subscriber or set its password")
    _db_arg(add)
    add.add_argument("aor", metavar="USER@DOMAIN")
    add.add_argument("password", metavar="PASSWORD")
    rm = usub.add_parser("del", help="remove a subscriber")
    _db_arg(rm)
    rm.add_argument("aor", metavar="USER@DOMAIN")
    ls = usub.add_parser("list", help="list subscribers")
    _db_arg(ls)

    address = sub.add_parser("address", help="manage IP address groups in the operator database")
    asub = address.add_subparsers(dest="op", required=True)
    aadd = asub.add_parser("add", help="add a network to a group")
    _db_arg(aadd)
    aadd.add_argument("group", type=int, metavar="GROUP")
    aadd.add_argument("cidr", metavar="CIDR")
    aadd.add_argument("port", type=int, nargs="?", default=0, metavar="PORT", help="0 (default): any port")
    aadd.add_argument("--tag", default="", help="free-form tag")
    adel = asub.add_parser("del", help="remove a network from a group")
    _db_arg(adel)
    adel.add_argument("group", type=int, metavar="GROUP")
    adel.add_argument("cidr", metavar="CIDR")
    adel.add_argument("port", type=int, nargs="?", default=None, metavar="PORT", help="default: every port")
    als = asub.add_parser("list", help="list address groups")
    _db_arg(als)
    add_trunk_commands(sub)


def operator_main(args: argparse.Namespace) -> int:
    """Run ``trioproxy user ...`` / ``trioproxy address ...``."""
    try:
        db = connect(args.db)
    except (SchemaError, sqlite3.Error) as exc:
        print(f"trioproxy: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(db, args)
    except ValueError as exc:
        print(f"trioproxy: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"trioproxy: database error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()


def _run(db: sqlite3.Connection, args: argparse.Namespace) -> int:
    if args.command == "trunk":
        return trunk_command(db, args)
    if args.command == "user":
        if args.op == "add":
            sub = add_user(db, args.aor, args.password)
            print(f"{sub.username}@{sub.domain}: saved")
            return 0
        if args.op == "del":
            return report_removal(del_user(db, args.aor), args.aor, "subscriber")
        for s in list_users(db):
            algorithms = "MD5,SHA-256" if s.ha1_sha256 else "MD5"
            print(f"{s.username}@{s.domain}\trealm={s.domain}\t{algorithms}")
        return 0
    if args.op == "add":
        entry = add_address(db, args.group, args.cidr, args.port, args.tag)
        print(f"group {entry.group}: {entry.network} port {entry.port or 'any'}: saved")
        return 0
    if args.op == "del":
        removed = del_address(db, args.group, args.cidr, args.port)
        if removed:
            print(f"group {args.group}: {removed} removed")
            return 0
        print(f"group {args.group}: no such entry", file=sys.stderr)
        return 1
    for e in list_addresses(db):
        print(f"{e.group}\t{e.network}\t{e.port}\t{e.tag}")
    return 0
