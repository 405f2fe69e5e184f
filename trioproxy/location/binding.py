"""The binding record: one contact registered for one address-of-record."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

__all__ = [
    "AddressLike",
    "Binding",
    "aor_key",
    "format_source",
    "parse_source",
]


class AddressLike(Protocol):
    """Anything with transport, host and port (`trioproxy.sip.Address`, a flow's local address)."""

    @property
    def transport(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of one address-of-record (RFC 3261 10.3, RFC 3327, RFC 5626).

    `aor` is the normalised key from `aor_key`; `contact` the Contact URI as registered; `expires_at` and
    `last_modified` absolute epoch seconds; `path` the Path vector in order (RFC 3327 5.3), used as the
    route set towards the contact; `received` the source `"transport:host:port"` the REGISTER came from
    when the UA is behind a NAT; `socket` the local listener (`"transport:host:port"`) it arrived on;
    `instance` the `+sip.instance` value (angle brackets kept, quotes removed) and `reg_id` the RFC 5626
    reg-id; `flags` the opaque flags passed to `Registrar.save`.
    """

    aor: str
    contact: str
    expires_at: float
    q: float = 1.0
    call_id: str = ""
    cseq: int = 0
    path: tuple[str, ...] = ()
    received: str | None = None
    socket: str | None = None
    instance: str | None = None
    reg_id: int | None = None
    user_agent: str | None = None
    last_modified: float = 0.0
    flags: int = 0

    def expires_in(self, now: float) -> int:
        """Seconds left at `now`, rounded up, never negative."""
        left = self.expires_at - now
        if left <= 0:
            return 0
        whole = int(left)
        return whole if whole == left else whole + 1

    def is_expired(self, now: float) -> bool:
        """True once `now` reached the expiry time."""
        return self.expires_at <= now

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (path as a list)."""
        # Field by field: dataclasses.asdict deep-copies every value, several times slower.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["path"] = list(self.path)
        return data

    def to_json(self) -> str:
        """Compact JSON, the form the redis backend stores."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        """Inverse of `to_dict` (unknown keys are ignored, so old records still load)."""
        values = {k: v for k, v in data.items() if k in _FIELDS}
        values["path"] = tuple(values.get("path") or ())
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> Binding:
        """Inverse of `to_json`."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("binding record is not an object")
        return cls.from_dict(data)


_FIELDS = tuple(f.name for f in dataclasses.fields(Binding))


def aor_key(user: str | None, host: str) -> str:
    """The normalised address-of-record key: `user@host`, host lowercased, user unescaped.

    RFC 3261 10.3 step 5: the registrar extracts the AOR from the To URI; 19.1.4 makes the host
    case-insensitive and escaped characters equal to their unescaped form, while the user part stays
    case-sensitive. Port and parameters are not part of the key.
    """
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not user:
        return host
    user = unquote(user)
    return f"{user}@{host}" if host else user


def format_source(address: AddressLike | str) -> str:
    """`"transport:host:port"` (IPv6 host in brackets) from an Address-like object or that string form.

    A string that is a SIP URI (`sip:1.2.3.4:5060;transport=tcp`, the form NAT helpers put in a
    `received` Contact parameter) is converted; any other string is returned unchanged.
    """
    if not isinstance(address, str):
        host = address.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{address.transport.lower()}:{host}:{address.port}"
    text = address.strip().strip('"')
    lower = text.lower()
    if lower.startswith(("sip:", "sips:")):
        secure = lower.startswith("sips:")
        rest = text[5 if secure else 4 :]
        hostport, _, params = rest.partition(";")
        transport = "tls" if secure else "udp"
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "transport" and value:
                transport = value.strip().lower()
        if "@" in hostport:
            hostport = hostport.rsplit("@", 1)[1]
        if hostport.startswith("["):
            host, _, tail = hostport.partition("]")
            host += "]"
            port_text = tail[1:] if tail.startswith(":") else ""
        elif hostport.count(":") == 1:
            host, _, port_text = hostport.partition(":")
        else:
            host, port_text = hostport, ""
        default = 5061 if transport in ("tls", "wss") else 5060
        port = int(port_text) if port_text.isdigit() else default
        return f"{transport}:{host.lower()}:{port}"
    return text


def parse_source(text: str) -> tuple[str, str, int]:
    """Split `"transport:host:port"` into its parts (IPv6 brackets removed); ValueError if malformed."""
    transport, sep, rest = text.partition(":")
    host, sep2, port_text = rest.rpartition(":")
    if not sep or not sep2 or not transport or not host or not port_text.isdigit():
        raise ValueError(f"not a transport:host:port source: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return transport.lower(), host, int(port_text)
