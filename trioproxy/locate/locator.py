"""RFC 3263 server location on dnspython's trio backend, with a shared TTL cache.

Theory of operation: ``locate(uri)`` picks one of four paths from the URI alone (RFC 3263 4.1, 4.2):

1. numeric host: no DNS; the transport is the ``transport`` param or the default (udp for sip, tls for sips);
2. explicit port: A/AAAA of the host only;
3. ``transport`` param: SRV of that transport, then A/AAAA with the default port if no SRV;
4. otherwise NAPTR (NXDOMAIN there ends the walk, RFC 8020), then SRV of each usable NAPTR replacement; with no usable NAPTR, SRV of each enabled
   transport in preference order; with no SRV at all, A/AAAA with the default transport and port.

Every query goes through the cache. NXDOMAIN and NoAnswer are cached (for the SOA's negative TTL, RFC 2308 5,
or ``negative_ttl``) and send the walk to its next step. A timeout or a SERVFAIL from every server stops the
walk: what was found so far is returned, or ``LocateError`` raised when nothing was. The whole walk runs under
one ``trio.move_on_after(lifetime)``, in the caller's task: cancelling the caller cancels the lookup.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sized

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import trio

from trioproxy.sip import URI, Address

from .blocklist import Blocklist
from .cache import NEGATIVE_NOANSWER, NEGATIVE_NXDOMAIN, DnsCache
from .config import ResolverConfig, build_resolver
from .errors import LocateError
from .records import (
    SRV_PREFIXES,
    NaptrRecord,
    SrvRecord,
    default_port,
    default_transport,
    is_ip_address,
    order_srv,
    select_naptr,
    srv_transports,
    uri_transport,
)

__all__ = ["Locator"]


class _LookupFailed(Exception):
    # a query that got no usable answer (timeout, SERVFAIL everywhere): not cached, stops the walk
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Locator:
    """Finds the ordered targets for SIP URIs; one instance (and one cache) shared by every request."""

    def __init__(
        self,
        config: ResolverConfig | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        blocklist: Blocklist | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self.config = config or ResolverConfig()
        self.blocklist = blocklist
        self.cache = DnsCache(self.config.cache_size)
        self._now = now
        self._rng = rng or random.Random()
        self._resolver = resolver or build_resolver(self.config)
        self._stats = {
            "locates": 0,
            "queries": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "negative_hits": 0,
            "negative_answers": 0,
            "failures_timeout": 0,
            "failures_servfail": 0,
            "failures_error": 0,
        }

    # -- public API -------------------------------------------------------------------------------------

    async def locate(self, uri: URI, *, blocked_last: bool = False) -> list[Address]:
        """The ordered, de-duplicated targets to try for ``uri`` (RFC 3263 4); [] if the name does not exist.

        Raises ``LocateError`` when DNS failed (timeout, SERVFAIL) before any target was found, or for a URI
        that is neither sip: nor sips:. With ``blocked_last``, blocklisted targets are moved to the end.
        """
        self._stats["locates"] += 1
        if uri.scheme not in ("sip", "sips"):
            raise LocateError("unsupported", f"cannot locate a {uri.scheme}: URI")
        # RFC 3263 4: maddr, when present, is the target instead of the host
        host = (uri.params.get("maddr") or uri.host).strip("[]")
        if not host:
            raise LocateError("unsupported", "URI has no host")
        param = uri.params.get("transport")
        found: list[Address] = []
        secure = uri.scheme == "sips"
        if is_ip_address(host):
            # RFC 3263 4.2: a numeric address needs no lookup (the common next hop: no DNS, no time bound)
            self._numeric(secure, host, uri.port, param, found)
            return self._ordered(found, blocked_last)

        async def walk() -> None:
            await self._walk(secure, host, uri.port, param, found)

        await self._bounded(walk, found, host)
        return self._ordered(found, blocked_last)

    def _ordered(self, found: list[Address], blocked_last: bool) -> list[Address]:
        targets = list(dict.fromkeys(found)) if len(found) > 1 else found
        if blocked_last and self.blocklist is not None:
            targets = self.blocklist.blocked_last(targets, self._now())
        return targets

    async def resolve_host(self, name: str) -> list[str]:
        """The IP addresses of ``name`` (A, and AAAA when IPv6 is used), for scripts; [] if none exist."""
        if is_ip_address(name):
            return [name] if self._ip_allowed(name) else []
        found: list[str] = []

        async def walk() -> None:
            found.extend(await self._addresses(name))

        await self._bounded(walk, found, name)
        return found

    def filter_blocked(self, targets: Iterable[Address], now: float | None = None) -> list[Address]:
        """``targets`` without the blocklisted ones, order kept (all of them when there is no blocklist)."""
        if self.blocklist is None:
            return list(targets)
        return self.blocklist.filter(targets, self._now() if now is None else now)

    def statistics(self) -> dict[str, int]:
        """Counters for metrics: locates, queries sent, cache hits/misses, negative hits, failures by kind."""
        stats = dict(self._stats)
        stats["cache_entries"] = len(self.cache)
        stats["cache_evictions"] = self.cache.evictions
        return stats

    # -- the RFC 3263 walk ------------------------------------------------------------------------------

    async def _bounded(self, walk: Callable[[], Awaitable[None]], found: Sized, name: str) -> None:
        # run one walk under the lifetime; keep partial results, raise only when nothing was found
        failure: str | None = None
        with trio.move_on_after(self.config.lifetime) as scope:
            try:
                await walk()
            except _LookupFailed as exc:
                failure = exc.kind
        if scope.cancelled_caught:
            self._stats["failures_timeout"] += 1
            failure = "timeout"
        if failure is not None and not found:
            raise LocateError(failure, f"DNS {failure} while locating {name}")

    def _numeric(self, secure: bool, host: str, port: int | None, param: str | None, found: list[Address]) -> None:
        # RFC 3263 4.2: a numeric IP address needs no lookup
        enabled = self.config.transports
        if param is not None:
            transport = uri_transport(secure, param)
            if transport is None or transport not in enabled:
                return  # sips: over UDP, or a transport the proxy cannot send on
            chosen: str | None = transport
        else:
            chosen = default_transport(secure, enabled)
        if chosen is not None and self._ip_allowed(host):
            found.append(Address(chosen, host, port or default_port(chosen)))

    async def _walk(
        self, secure: bool, host: str, port: int | None, param: str | None, found: list[Address]
    ) -> None:
        enabled = self.config.transports
        transport: str | None = None
        if param is not None:
            transport = uri_transport(secure, param)
            if transport is None or transport not in enabled:
                return  # sips: over UDP, or a transport the proxy cannot send on
        chosen = transport or default_transport(secure, enabled)
        if is_ip_address(host):
            self._numeric(secure, host, port, param, found)
            return
        # RFC 3263 4.2: with an explicit port, A/AAAA only
        if port is not None:
            if chosen is not None:
                found.extend(Address(chosen, ip, port) for ip in await self._addresses(host))
            return
        # RFC 3263 4.2: a transport given explicitly (not by NAPTR) and no port -> SRV of that transport
        if transport is not None:
            if not await self._srv(f"{SRV_PREFIXES[transport]}.{host}", transport, found):
                found.extend(
                    Address(transport, ip, default_port(transport)) for ip in await self._addresses(host)
                )
            return
        # RFC 3263 4.1: NAPTR, ordered by order then preference; each replacement is an SRV name
        answer, negative = await self._query(host, "NAPTR")
        if negative == NEGATIVE_NXDOMAIN:
            return  # RFC 8020: nothing exists at or below a name that does not exist (no SRV, no A)
        naptrs = [r for r in answer if isinstance(r, NaptrRecord)]
        any_srv = False
        for record, naptr_transport in select_naptr(naptrs, secure=secure, transports=enabled):
            any_srv = await self._srv(record.replacement, naptr_transport, found) or any_srv
        if any_srv:
            return
        # RFC 3263 4.1: no (usable) NAPTR -> an SRV query for each supported transport
        for srv_transport in srv_transports(secure, enabled):
            any_srv = (
                await self._srv(f"{SRV_PREFIXES[srv_transport]}.{host}", srv_transport, found) or any_srv
            )
        if any_srv:
            return
        # RFC 3263 4.2: no SRV -> A/AAAA of the domain, UDP for sip and TLS for sips, the default port
        if chosen is not None:
            found.extend(Address(chosen, ip, default_port(chosen)) for ip in await self._addresses(host))

    async def _srv(self, name: str, transport: str, found: list[Address]) -> bool:
        # SRV of one name, targets appended in RFC 2782 order; True if the name had SRV records at all
        records = [r for r in await self._lookup(name, "SRV") if isinstance(r, SrvRecord)]
        if not records:
            return False
        for srv in order_srv(records, self._rng):
            if srv.target == ".":
                continue  # RFC 2782: "." means the service is decidedly not available at this domain
            found.extend(Address(transport, ip, srv.port) for ip in await self._addresses(srv.target))
        return True

    async def _addresses(self, host: str) -> list[str]:
        # A and AAAA of one host, asked together; a failure of one is fatal only when the other found nothing
        if is_ip_address(host):
            return [host] if self._ip_allowed(host) else []
        rdtypes = ("A", "AAAA") if self.config.use_ipv6 else ("A",)
        results: dict[str, list[str]] = {}
        failures: list[_LookupFailed] = []

        async def one(rdtype: str) -> None:
            try:
                results[rdtype] = [r for r in await self._lookup(host, rdtype) if isinstance(r, str)]
            except _LookupFailed as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for rdtype in rdtypes:
                nursery.start_soon(one, rdtype)
        v4, v6 = results.get("A", []), results.get("AAAA", [])
        addresses = v6 + v4 if self.config.prefer_ipv6 else v4 + v6
        if not addresses and failures:
            raise failures[0]
        return addresses

    def _ip_allowed(self, host: str) -> bool:
        return self.config.use_ipv6 or ":" not in host  # a literal with a colon is IPv6

    # -- one cached query -------------------------------------------------------------------------------

    async def _lookup(self, name: str, rdtype: str) -> tuple[object, ...]:
        # records of name/rdtype (empty for NXDOMAIN/NoAnswer), from the cache or from DNS
        records, _ = await self._query(name, rdtype)
        return records

    async def _query(self, name: str, rdtype: str) -> tuple[tuple[object, ...], str | None]:
        # (records, None) or ((), NEGATIVE_NXDOMAIN / NEGATIVE_NOANSWER); raises _LookupFailed
        entry = self.cache.get(name, rdtype, self._now())
        if entry is not None:
            self._stats["cache_hits"] += 1
            if entry.negative is not None:
                self._stats["negative_hits"] += 1
            return entry.records, entry.negative
        self._stats["cache_misses"] += 1
        self._stats["queries"] += 1
        qname = dns.name.from_text(name.rstrip(".") + ".")
        try:
            answer = await self._resolver.resolve(qname, rdtype, search=False, lifetime=self.config.lifetime)
        except dns.resolver.NXDOMAIN as exc:
            self._negative(name, rdtype, NEGATIVE_NXDOMAIN, _exception_responses(exc))
            return (), NEGATIVE_NXDOMAIN
        except dns.resolver.NoAnswer as exc:
            self._negative(name, rdtype, NEGATIVE_NOANSWER, _exception_responses(exc))
            return (), NEGATIVE_NOANSWER
        except dns.resolver.NoNameservers as exc:
            self._stats["failures_servfail"] += 1
            raise _LookupFailed("servfail") from exc
        except dns.exception.Timeout as exc:
            self._stats["failures_timeout"] += 1
            raise _LookupFailed("timeout") from exc
        except dns.exception.DNSException as exc:
            self._stats["failures_error"] += 1
            raise _LookupFailed("error") from exc
        records = _records(answer, rdtype)
        self.cache.put(name, rdtype, records, answer.chaining_result.minimum_ttl, self._now())
        return records, None

    def _negative(self, name: str, rdtype: str, kind: str, responses: list[dns.message.Message]) -> None:
        self._stats["negative_answers"] += 1
        ttl = _soa_negative_ttl(responses)
        self.cache.put_negative(
            name, rdtype, kind, self.config.negative_ttl if ttl is None else ttl, self._now()
        )


def _exception_responses(exc: dns.exception.DNSException) -> list[dns.message.Message]:
    # the responses dnspython attached to NXDOMAIN ("responses": {qname: msg}) or NoAnswer ("response": msg)
    kwargs: dict[str, object] = getattr(exc, "kwargs", None) or {}
    found: list[object] = []
    responses = kwargs.get("responses")
    if isinstance(responses, dict):
        found.extend(responses.values())
    found.append(kwargs.get("response"))
    return [r for r in found if isinstance(r, dns.message.Message)]


def _soa_negative_ttl(responses: Iterable[dns.message.Message]) -> float | None:
    # RFC 2308 5: a negative answer lives min(SOA TTL, SOA MINIMUM) seconds
    for response in responses:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
                return float(min(rrset.ttl, rrset[0].minimum))
    return None


def _records(answer: dns.resolver.Answer, rdtype: str) -> tuple[object, ...]:
    # dnspython rdata -> plain values: str for A/AAAA, SrvRecord, NaptrRecord
    rrset = answer.rrset
    if rrset is None:
        return ()
    if rdtype in ("A", "AAAA"):
        return tuple(str(rr.address) for rr in rrset)
    if rdtype == "SRV":
        return tuple(
            SrvRecord(rr.priority, rr.weight, rr.port, _name_text(rr.target)) for rr in rrset
        )  # fmt: skip
    if rdtype == "NAPTR":
        return tuple(
            NaptrRecord(
                rr.order,
                rr.preference,
                _text(rr.flags),
                _text(rr.service),
                _text(rr.regexp),
                _name_text(rr.replacement),
            )
            for rr in rrset
        )
    raise ValueError(f"unsupported record type {rdtype}")


def _name_text(name: dns.name.Name) -> str:
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True)


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
