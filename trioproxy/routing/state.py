"""Per-request routing state: the message plus everything a script decides about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from trioproxy.sip import URI, Address, Request, Response, parse_uri_untrusted

__all__ = ["BranchTarget", "RequestState"]

Value = str | int


@dataclass(slots=True)
class BranchTarget:
    """An extra branch added by the script (``append_branch``, ``lookup``, ``t_next_contacts``)."""

    uri: str
    dst_uri: str | None = None
    q: float | None = None
    path: tuple[str, ...] = ()
    bflags: int = 0


@dataclass(slots=True)
class RequestState:
    """What one route call works on.

    ``msg`` is the message the route sees: the request for request/branch/failure routes (the proxy edits
    and forwards it), the response for reply routes, where ``request`` is the transaction's request. The
    proxy reads the decision fields after the route returns; those marked *input* are set by the proxy
    before a failure or reply route runs.
    """

    msg: Request | Response
    local: Address | None = None  # where it arrived ($Ri, $Rp)
    route: str = "request"  # the kind of route running: request, failure, branch, reply (KSR.tmx.t_is_*)
    request: Request | None = None  # reply/failure routes: the transaction's request
    original: Request | None = None  # the request as received (the server transaction answers from it)
    response: Response | None = None  # input: the reply (reply route) or best reply (failure route)

    flags: int = 0  # message flags (setflag)
    bflags: int = 0  # branch flags of the R-URI branch (setbflag)
    dst_uri: str | None = None  # $du: next hop instead of R-URI / Route
    ruri_q: float | None = None  # q of the R-URI branch (from lookup)
    path: tuple[str, ...] = ()  # route set (RFC 3327 Path) of the R-URI branch (from lookup)
    branches: list[BranchTarget] = field(default_factory=list)
    contact_stages: list[list[BranchTarget]] = field(default_factory=list)  # t_load_contacts, by q

    vars: dict[str, Value] = field(default_factory=dict)  # $var(x)
    avps: dict[str, list[Value]] = field(default_factory=dict)  # $avp(x), newest first
    xavps: dict[str, list[dict[str, list[Value]]]] = field(default_factory=dict)  # $xavp(r=>k)

    reply_headers: list[tuple[str, str]] = field(default_factory=list)  # append_to_reply
    replied: tuple[int, str] | None = None  # the reply the script sent (status, reason)

    on_failure: str | None = None  # t_on_failure / t_on_branch / t_on_reply route names
    on_branch: str | None = None
    on_reply: str | None = None
    fr_inv_timeout: int | None = None  # t_set_fr, milliseconds (0: keep the default)
    fr_timeout: int | None = None

    record_route: bool = False  # record_route(): the proxy adds Record-Route (;lr) when relaying
    record_route_preset: list[str] = field(default_factory=list)  # URIs record_route_preset put on msg
    rr_params: list[str] = field(default_factory=list)  # add_rr_param(";p=v")
    route_params: str = ""  # parameters of our own Route header popped by loose_route
    maxfwd_processed: bool = False  # process_maxfwd already adjusted Max-Forwards
    reply_no_connect: bool = False  # set_reply_no_connect: responses only over a connection already open
    forced_dest: Address | None = None  # t_relay_to_proto_addr
    received_uri: str | None = None  # fix_nated_register: source to store with the binding
    relayed: int = 0  # number of successful t_relay calls
    last_error: tuple[int, str] | None = None  # what sl_reply_error answers: the last failed relay's cause

    trace: list[tuple[str, tuple[object, ...], object]] | None = None  # KSR calls made, when recorded

    exited: bool = False  # KSR.x.exit
    dropped: bool = False  # KSR.x.drop / KSR.drop

    canceled: bool = False  # input: the transaction was canceled (t_is_canceled)
    any_timeout: bool = False  # input: a branch timed out (t_any_timeout)
    any_replied: bool = False  # input: a branch got a reply (t_any_replied)
    branch_timeout: bool = False  # input: the failed branch timed out (t_branch_timeout)
    branch_index: int = 0  # input: the branch a branch or reply route runs for ($T_branch_idx)

    @property
    def is_request(self) -> bool:
        """Whether the route works on a request (not a reply route)."""
        return isinstance(self.msg, Request)

    @property
    def req(self) -> Request:
        """The request: ``msg`` for request routes, ``request`` for reply routes."""
        if isinstance(self.msg, Request):
            return self.msg
        if self.request is None:
            raise ValueError("no request in this route")
        return self.request

    @property
    def method(self) -> str:
        """The request method (the CSeq method for a reply)."""
        if isinstance(self.msg, Request):
            return self.msg.method
        return self.msg.cseq.method

    @property
    def ruri(self) -> URI:
        """The Request-URI (settable through ``set_ruri``)."""
        return self.req.uri

    def set_ruri(self, text: str) -> None:
        """Rewrite the Request-URI."""
        self.req.uri = parse_uri_untrusted(text)

    def target_set(self) -> list[BranchTarget]:
        """What ``t_relay`` forwards to: the R-URI branch ($ru, $du, q, path, bflags), then appended ones."""
        return [
            BranchTarget(str(self.ruri), self.dst_uri, self.ruri_q, self.path, self.bflags),
            *self.branches,
        ]

    def add_branch(self, target: BranchTarget) -> None:
        """Append a branch to the target set."""
        self.branches.append(target)

    def begin_failure_route(
        self,
        response: Response | None,
        *,
        timeout: bool = False,
        canceled: bool = False,
        replied: bool = True,
    ) -> None:
        """Prepare the state for a failure route: the best reply is ``response`` (None: none received)."""
        self.route = "failure"
        self.response = response
        self.branch_timeout = timeout
        self.any_timeout = self.any_timeout or timeout
        self.any_replied = self.any_replied or replied
        self.canceled = canceled
        self.branches = []
        self.dst_uri = None
        self.on_failure = None
        self.exited = False
        self.forced_dest = None

    def for_reply(self, response: Response, index: int = 0) -> RequestState:
        """A state for a reply route on ``response``, sharing this request's flags and variables."""
        return RequestState(
            msg=response,
            route="reply",
            local=self.local,
            request=self.req,
            response=response,
            flags=self.flags,
            bflags=self.bflags,
            vars=self.vars,
            avps=self.avps,
            xavps=self.xavps,
            on_reply=self.on_reply,
            branch_index=index,
        )

    def for_branch(self, branch_request: Request, bflags: int = 0, index: int = 0) -> RequestState:
        """A state for a branch route on one branch's own copy of the request."""
        return RequestState(
            msg=branch_request,
            route="branch",
            local=self.local,
            original=self.original,
            flags=self.flags,
            bflags=bflags,
            vars=self.vars,
            avps=self.avps,
            xavps=self.xavps,
            branch_index=index,
        )
