"""``trioproxy trunk add|del|list``: the ``uacreg`` table of the operator database (docs/DB.md).

    trioproxy trunk add --db URL pbx1 --l-user office@pbx.example --r-user pbx@trunk.example \\
        --password - --proxy sip:registrar.trunk.example:5060 --expires 600
    trioproxy trunk del --db URL pbx1
    trioproxy trunk list --db URL

``--password -`` reads the password from the first line of standard input (so it does not show in the
process list). ``add`` on an existing ``l_uuid`` replaces the row; a running proxy unregisters the old
binding and registers the new one within ``db.refresh_interval`` seconds.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

from trioproxy.db import split_user
from trioproxy.uac.registration import Trunk
from trioproxy.uac.table import FLAG_DISABLED, TrunkRow, add_trunk, del_trunk, list_trunks

__all__ = ["add_trunk_commands", "report_removal", "trunk_command"]


def add_trunk_commands(sub: Any) -> None:
    """Add the ``trunk`` subcommand to the CLI's subparsers."""
    trunk = sub.add_parser("trunk", help="manage trunk registrations (uacreg) in the operator database")
    tsub = trunk.add_subparsers(dest="op", required=True)
    add = tsub.add_parser("add", help="add a trunk registration, or replace the one with this L_UUID")
    add.add_argument("--db", metavar="URL", required=True, help="the operator database, sqlite:///PATH")
    add.add_argument("l_uuid", metavar="L_UUID", help="the Contact user the provider sends calls to")
    add.add_argument("--l-user", required=True, metavar="USER@DOMAIN", help="the local user of those calls")
    add.add_argument("--r-user", required=True, metavar="USER@DOMAIN", help="the account at the provider")
    add.add_argument("--password", default="", help='the account\'s password ("-": read from stdin)')
    add.add_argument("--auth-username", default="", help="digest user name (default: the account's user)")
    add.add_argument("--realm", default="", help="the digest realm (default: any)")
    add.add_argument("--proxy", default="", metavar="URI", help="where REGISTERs go (default: the domain)")
    add.add_argument("--expires", type=int, default=3600, help="seconds asked for (0: never register)")
    add.add_argument("--flags", type=int, default=0, help=f"{FLAG_DISABLED}: disabled (kept for uac_auth)")
    add.add_argument("--reg-delay", type=int, default=0, metavar="SECONDS", help="wait before registering")
    rm = tsub.add_parser("del", help="remove a trunk registration (a running proxy unregisters it)")
    rm.add_argument("--db", metavar="URL", required=True, help="the operator database, sqlite:///PATH")
    rm.add_argument("l_uuid", metavar="L_UUID")
    ls = tsub.add_parser("list", help="list trunk registrations (passwords not shown)")
    ls.add_argument("--db", metavar="URL", required=True, help="the operator database, sqlite:///PATH")


def report_removal(removed: bool, name: str, kind: str) -> int:
    """The outcome of a ``del``: ``NAME: removed`` (exit status 0) or ``NAME: no such KIND`` on stderr (1)."""
    if removed:
        print(f"{name}: removed")
        return 0
    print(f"{name}: no such {kind}", file=sys.stderr)
    return 1


def trunk_command(db: sqlite3.Connection, args: argparse.Namespace) -> int:
    """Run one ``trioproxy trunk`` operation (``ValueError`` on bad input)."""
    if args.op == "add":
        password = args.password
        if password == "-":
            password = sys.stdin.readline().rstrip("\r\n")
        l_user, l_domain = split_user(args.l_user)
        r_user, r_domain = split_user(args.r_user)
        trunk = Trunk(
            args.l_uuid, l_user, l_domain, r_user, r_domain, realm=args.realm, auth_username=args.auth_username,
            auth_password=password, auth_proxy=args.proxy, expires=args.expires,
        )  # fmt: skip
        add_trunk(db, TrunkRow(trunk, args.flags, args.reg_delay))
        print(f"{args.l_uuid}: saved")
        return 0
    if args.op == "del":
        return report_removal(del_trunk(db, args.l_uuid), args.l_uuid, "trunk")
    for row in list_trunks(db):
        t = row.trunk
        where = t.auth_proxy or f"sip:{t.r_domain}"
        state = "registers" if row.registers else "disabled"
        print(
            f"{t.l_uuid}\tsip:{t.l_username}@{t.l_domain}\tsip:{t.r_username}@{t.r_domain}\t{where}"
            f"\texpires={t.expires}\tflags={row.flags}\treg_delay={row.reg_delay}\t{state}"
        )
    return 0
