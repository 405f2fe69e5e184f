"""KSR modules that record decisions for the proxy: rr, tm, tmx, corex, htable, nathelper, sanity checks.

The proxy acts on what these record (``state.record_route``, ``state.on_failure``, ``state.fr_timeout``...)
when the script relays; functions that need I/O are effects (see ``effects.py``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from trioproxy.sip import NameAddr, Request, SIPError, parse_uri_untrusted

from . import saferegex
from .ksr_core import KsrContext, _b, _Mod
from .services import ContactInfo
from .state import BranchTarget, RequestState

__all__ = ["Corex", "Htable", "Nathelper", "Rr", "Tm", "Tmx", "apply_contacts", "sanity_problem"]

Value = str | int
_PROTO_NUM = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
_NUM_PROTO = {v: k for k, v in _PROTO_NUM.items()}


class Rr(_Mod):
    """``KSR.rr``: Record-Route is added by the proxy at relay time; loose routing edits the request."""

    def record_route(self, params: str | None = None) -> int:
        self._st.record_route = True
        if params:
            self._st.rr_params.append(params)
        return 1

    def record_route_preset(self, addr: str, addr2: str | None = None) -> int:
        """Put exactly ``<sip:addr;lr>`` (and ``<sip:addr2;lr>`` below it, both with ``;r2=on``) on the request.

        As Kamailio: ``sip:`` is added when the value has no scheme and ``;lr`` when it lacks one; the
        parameters of ``add_rr_param`` follow. With two values the first names the outbound interface.
        """
        st = self._st
        uris = []
        for a in (addr, addr2):
            if not a:
                continue
            text = str(a).strip().strip("<>")
            if not text.lower().startswith(("sip:", "sips:")):
                text = f"sip:{text}"
            try:
                parse_uri_untrusted(text)
            except SIPError:
                return -1
            uris.append(text)
        if not uris:
            return -1
        _put_preset(st, uris)
        return 1

    def add_rr_param(self, param: str) -> int:
        st = self._st
        st.rr_params.append(param)
        if st.record_route_preset:
            _put_preset(st, st.record_route_preset)
        return 1

    def check_route_param(self, regex: str) -> int:
        return _b(saferegex.search(regex, self._st.route_params))

    def loose_route(self) -> int:
        """RFC 3261 16.4: consume our own Route entry; 1 when the request carried a route set, else -1.

        When the proxy core already popped our Route (16.4) before the script ran, it leaves that Route's
        URI parameters in ``state.route_params`` (at least ``";lr"``), so this still answers 1.
        """
        st = self._st
        req = st.req
        had_route = bool(st.route_params) or req.has("Route")
        routes = req.routes
        # 16.4: an R-URI that is our own Record-Route value means a strict router upstream: the real
        # target is the last Route entry.
        u = req.uri
        if routes and u.user is None and self._ctx.is_myself(u.host, u.port):
            values = req.get_all("Route")
            req.remove("Route")
            for v in values[:-1]:
                req.append("Route", v)
            req.uri = routes[-1].uri.copy()
            routes = routes[:-1]
        # 16.4: if the first Route is ours, remove it.
        if routes and self._ctx.is_myself(routes[0].uri.host, routes[0].uri.port):
            req.pop_first("Route")
            st.route_params = "".join(
                f";{k}" if v is None else f";{k}={v}" for k, v in routes[0].uri.params.items()
            )
            routes = routes[1:]
        # 16.6 step 6: the next hop is a strict router: it goes in the R-URI, the R-URI at the end.
        if routes and "lr" not in routes[0].uri.params:
            req.pop_first("Route")
            req.append("Route", f"<{req.uri}>")
            req.uri = routes[0].uri.copy()
        return _b(had_route)


def _put_preset(st: RequestState, uris: list[str]) -> None:
    # (Re)write the preset Record-Route headers at the top of the request.
    req = st.req
    for _ in st.record_route_preset:
        req.pop_first("Record-Route")
    params = "".join(p if p.startswith(";") else f";{p}" for p in st.rr_params)
    double = len(uris) > 1
    for uri in reversed(uris):
        u = parse_uri_untrusted(uri)
        extra = ("" if "lr" in u.params else ";lr") + (";r2=on" if double and "r2" not in u.params else "")
        req.insert_top("Record-Route", f"<{uri}{extra}{params}>")
    st.record_route_preset = list(uris)


class Tm(_Mod):
    """``KSR.tm`` functions that only record (t_relay, t_reply, t_check_trans, t_newtran are effects)."""

    def t_is_canceled(self) -> int:
        return _b(self._st.canceled)

    def t_is_set(self, target: str) -> int:
        st = self._st
        name = {"failure_route": st.on_failure, "branch_route": st.on_branch, "onreply_route": st.on_reply}
        if target not in name:
            raise ValueError(f"t_is_set: unknown target {target!r}")
        return _b(name[target] is not None)

    def t_set_fr(self, fr_inv: int, fr: int = 0) -> int:
        st = self._st
        st.fr_inv_timeout = int(fr_inv) or None
        st.fr_timeout = int(fr) or None
        return 1

    def t_on_failure(self, name: str) -> int:
        self._st.on_failure = name or None
        return 1

    def t_on_branch(self, name: str) -> int:
        self._st.on_branch = name or None
        return 1

    def t_on_reply(self, name: str) -> int:
        self._st.on_reply = name or None
        return 1

    def t_branch_timeout(self) -> int:
        return _b(self._st.branch_timeout)

    def t_any_timeout(self) -> int:
        return _b(self._st.any_timeout)

    def t_any_replied(self) -> int:
        return _b(self._st.any_replied)

    def t_check_status(self, regex: str) -> int:
        st = self._st
        resp = st.msg if not st.is_request else st.response
        if resp is None or not hasattr(resp, "status"):
            return -1
        return _b(saferegex.fullmatch(regex, str(resp.status)))

    def t_load_contacts(self) -> int:
        """Group the R-URI and the appended branches by q into serial stages (highest q first)."""
        st = self._st
        targets = st.target_set()
        if len(targets) < 2:
            return 1
        by_q: dict[float, list[BranchTarget]] = {}
        for t in targets:
            by_q.setdefault(1.0 if t.q is None else t.q, []).append(t)
        st.contact_stages = [by_q[q] for q in sorted(by_q, reverse=True)]
        st.branches = []
        return 1

    def t_next_contacts(self) -> int:
        """Make the next stage the target set: its first contact the R-URI, the others branches."""
        st = self._st
        if not st.contact_stages:
            return -1
        first, *rest = st.contact_stages.pop(0)
        st.set_ruri(first.uri)
        st.dst_uri = first.dst_uri
        st.ruri_q = first.q
        st.path = first.path
        st.bflags = first.bflags
        st.branches = list(rest)
        return 1


class Tmx(_Mod):
    """``KSR.tmx``."""

    def t_precheck_trans(self) -> int:
        # The transaction layer absorbs retransmissions before any route runs, so a request that reaches
        # the script is never a retransmission of one still being routed.
        self._st.req  # noqa: B018  (a request is required)
        return -1

    def t_is_branch_route(self) -> int:
        return _b(self._st.route == "branch")

    def t_is_failure_route(self) -> int:
        return _b(self._st.route == "failure")

    def t_is_reply_route(self) -> int:
        return _b(self._st.route == "reply")

    def t_is_request_route(self) -> int:
        return _b(self._st.route == "request")


class Corex(_Mod):
    """``KSR.corex``."""

    def has_ruri_user(self) -> int:
        return _b(bool(self._st.ruri.user))

    def append_branch(self, uri: str | None = None, q: float | None = None) -> int:
        st = self._st
        if uri:
            target = BranchTarget(str(parse_uri_untrusted(uri)), None, q, (), st.bflags)
        else:
            target = BranchTarget(str(st.ruri), st.dst_uri, st.ruri_q if q is None else q, st.path, st.bflags)
        st.add_branch(target)
        return 1


class Htable:
    """``KSR.htable``: the shared in-process tables."""

    def __init__(self, ctx: KsrContext) -> None:
        self._ctx = ctx

    def sht_get(self, table: str, key: str) -> Value | None:
        return self._ctx.htables.table(table).get(key)

    def sht_gete(self, table: str, key: str) -> Value:
        v = self.sht_get(table, key)
        return "" if v is None else v

    def sht_sets(self, table: str, key: str, value: str) -> int:
        self._ctx.htables.table(table).set(key, str(value))
        return 1

    def sht_seti(self, table: str, key: str, value: int) -> int:
        self._ctx.htables.table(table).set(key, int(value))
        return 1

    def sht_inc(self, table: str, key: str) -> int:
        return self._ctx.htables.table(table).inc(key, 1)

    def sht_dec(self, table: str, key: str) -> int:
        return self._ctx.htables.table(table).inc(key, -1)

    def sht_rm(self, table: str, key: str) -> int:
        self._ctx.htables.table(table).remove(key)
        return 1

    def sht_is_null(self, table: str, key: str) -> int:
        return _b(self.sht_get(table, key) is None)

    def sht_match_name(self, table: str, op: str, value: str) -> int:
        return _b(self._ctx.htables.table(table).match_name(op, value))


# RFC 1918 private ranges, RFC 6598 shared address space (carrier-grade NAT), RFC 4193 unique local.
_PRIVATE_NETS = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]


def _private(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in _PRIVATE_NETS if net.version == ip.version)


_SDP_C_RE = re.compile(rb"^c=IN IP[46] ([^\s/]+)", re.M)


class Nathelper(_Mod):
    """``KSR.nathelper``: detect and fix UAs behind NAT by comparing the message with its source."""

    def nat_uac_test(self, flags: int) -> int:
        """Bits: 1 Contact private IP, 2 Via host != source IP, 4 Via host private, 8 SDP c= private,
        16 Via port != source port, 32 Contact host != source IP, 64 arrived over WebSocket (ws/wss),
        128 Contact port != source port."""
        msg = self._st.msg
        src = msg.source
        f = int(flags)
        contacts = [c for c in msg.contacts if not c.is_star] if msg.has("Contact") else []
        via = msg.top_via
        via_host, via_port = via.sent_by
        checks: list[tuple[int, Callable[[], bool]]] = [
            (1, lambda: any(_private(c.uri.host) for c in contacts)),
            (2, lambda: src is not None and via_host != src.host),
            (4, lambda: _private(via_host)),
            (8, lambda: any(_private(m.decode()) for m in _SDP_C_RE.findall(msg.body))),
            (16, lambda: src is not None and (via_port or 5060) != src.port),
            (32, lambda: src is not None and any(c.uri.host != src.host for c in contacts)),
            (64, lambda: src is not None and src.transport in ("ws", "wss")),
            (128, lambda: src is not None and any((c.uri.port or 5060) != src.port for c in contacts)),
        ]
        return _b(any(bit & f and test() for bit, test in checks))

    def _rewrite_contact(self, edit: str) -> int:
        msg = self._st.msg
        src = msg.source
        if src is None or not msg.has("Contact"):
            return -1
        contacts = msg.contacts
        if not contacts or contacts[0].is_star:
            return -1
        first: NameAddr = contacts[0].copy()
        if edit == "fix":
            first.uri.host, first.uri.port = src.host, src.port
        else:
            first.uri.params["alias"] = f"{src.host}~{src.port}~{_PROTO_NUM.get(src.transport, 1)}"
        msg.set("Contact", ", ".join([str(first), *(str(c) for c in contacts[1:])]))
        return 1

    def fix_nated_contact(self) -> int:
        return self._rewrite_contact("fix")

    def set_contact_alias(self) -> int:
        return self._rewrite_contact("alias")

    def add_contact_alias(self) -> int:
        """``;alias=ip~port~proto`` of the source on the first Contact; in a reply route, of the reply being
        forwarded (so that in-dialog requests find a WebSocket or NATed callee over its flow)."""
        return self._rewrite_contact("alias")

    def fix_nated_register(self) -> int:
        st = self._st
        src = st.msg.source
        if src is None or not st.is_request or st.method != "REGISTER":
            return -1
        st.received_uri = f"sip:{src.host_port};transport={src.transport}"
        return 1

    def handle_ruri_alias(self) -> int:
        """Turn an ``;alias=ip~port~proto`` R-URI parameter into $du; 2 when there is none."""
        st = self._st
        alias = st.ruri.params.get("alias")
        if alias is None:
            return 2
        parts = alias.split("~")
        if len(parts) != 3 or not parts[1].isdigit():
            return -1
        host = f"[{parts[0]}]" if ":" in parts[0] else parts[0]
        proto = _NUM_PROTO.get(int(parts[2]) if parts[2].isdigit() else 1, "udp")
        u = st.ruri.copy()
        del u.params["alias"]
        st.req.uri = u
        st.dst_uri = f"sip:{host}:{parts[1]};transport={proto}"
        return 1


def apply_contacts(state: RequestState, contacts: Sequence[ContactInfo]) -> int:
    """registrar lookup: the highest-q contact becomes the R-URI, the others appended branches."""
    if not contacts:
        return -1
    ordered = sorted(contacts, key=lambda c: -c.q)
    first, rest = ordered[0], ordered[1:]
    state.set_ruri(first.uri)
    state.dst_uri = first.received
    state.ruri_q = first.q
    state.path = first.path
    state.bflags |= first.flags
    state.branches = [BranchTarget(c.uri, c.received, c.q, c.path, c.flags) for c in rest]
    return 1


def sanity_problem(state: RequestState) -> tuple[int, str, list[tuple[str, str]]] | None:
    """RFC 3261 16.3 / 8.2 request checks; the reply to send (status, reason, headers) or None when sane."""
    msg = state.msg
    if not isinstance(msg, Request):
        return None
    if msg.version != "SIP/2.0":
        return 505, "Version Not Supported", []
    # 16.3 step 2: a URI scheme we do not understand.
    if msg.uri.scheme not in ("sip", "sips", "tel"):
        return 416, "Unsupported URI Scheme", []
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not msg.has(name):
            return 400, f"Missing {name}", []
    try:
        msg.from_  # noqa: B018  (parsing is the check)
        msg.to  # noqa: B018
        cseq = msg.cseq
        msg.top_via  # noqa: B018
        msg.max_forwards  # noqa: B018
        msg.expires  # noqa: B018
        cl = msg.content_length
    except SIPError as e:
        return 400, e.reason, []
    # 8.1.1.5: the CSeq method matches the request method; the number is below 2**31.
    if cseq.method != msg.method:
        return 400, "CSeq Method Mismatch", []
    if cseq.seq >= 2**31:
        return 400, "Bad CSeq", []
    if cl is not None and cl != len(msg.body):
        return 400, "Bad Content-Length", []
    # 16.3 step 5: we support no option-tags, so any Proxy-Require gets 420 listing them.
    tags = msg.get_all("Proxy-Require")
    if tags:
        return 420, "Bad Extension", [("Unsupported", ", ".join(tags))]
    return None
