"""TLS (RFC 3261 26.2, RFC 5246/8446) for SIP: the SSL contexts that turn TCP connections into TLS ones.

Theory of operation. TLS is the TCP transport with a ``trio.SSLStream`` between the socket and the framer:
``tcp.py`` keeps the one implementation of listeners, framing, connection reuse and limits, and asks a
``TLSContexts`` to wrap each stream, ``server_stream`` for an accepted connection and ``client_stream`` for
one the proxy opens. The handshake runs in the connection's own task (accepted) or before the connection
is used (opened), bounded by ``TransportConfig.handshake_timeout``.

- Listening (``tls:HOST:PORT``) needs a certificate chain and its key. With ``verify_client`` the peer must
  present a certificate that ``ca`` signed, else the handshake fails and the connection closes.
- Opening: the server's certificate is verified (``verify_server``, the default) against ``ca`` or the
  system's bundle, and checked against the next hop's name (SNI + ``check_hostname``); a next hop known by
  IP address only is checked against the certificate's IP address SANs. Our own certificate, when we have
  one, is offered to servers that ask for it.
- ``reload()`` (SIGHUP) reads the files again into new contexts used by connections made from then on;
  connections already open keep theirs. A reload that fails leaves the current contexts in place.
- TLS 1.2 is the lowest version offered or accepted (``min_version``: ``"TLSv1.2"`` or ``"TLSv1.3"``).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import trio

__all__ = ["TLSContexts", "TLSSettings", "tls_version"]

log = logging.getLogger("trioproxy.transport")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def tls_version(name: str) -> ssl.TLSVersion:
    """``"TLSv1.2"``/``"TLSv1.3"`` (also ``"1.2"``/``"1.3"``) as an ``ssl.TLSVersion``; ValueError otherwise."""
    key = name if name.startswith("TLSv") else f"TLSv{name}"
    try:
        return _VERSIONS[key]
    except KeyError:
        raise ValueError(f"unsupported TLS version {name!r} (expected TLSv1.2 or TLSv1.3)") from None


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """Files and policy of TLS; paths are PEM files ("" for none)."""

    cert: str = ""  # our certificate chain (needed to listen on TLS; offered to servers that ask)
    key: str = ""  # its private key
    ca: str = ""  # CA bundle: verifies client certificates, and server certificates ("" = the system's)
    verify_client: bool = False  # clients of a TLS listener must present a certificate signed by ``ca``
    verify_server: bool = True  # check the certificate of a server we connect to (chain and name)
    min_version: str = "TLSv1.2"


class TLSContexts:
    """The current server and client ``ssl.SSLContext``; ``reload()`` replaces them for new connections."""

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings
        self.reloads = 0
        self.server: ssl.SSLContext | None = None
        self.client: ssl.SSLContext = self._client_context()
        if settings.cert:
            self.server = self._server_context()

    def reload(self) -> bool:
        """Read the certificate, key and CA files again; True when the new contexts are in use. On an error
        (logged) the current contexts stay."""
        try:
            server = self._server_context() if self.settings.cert else None
            client = self._client_context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS reload failed, keeping the current certificate: %s", exc)
            return False
        self.server, self.client = server, client
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.settings.cert or "(none)")
        return True

    def server_stream(self, stream: trio.SocketStream) -> trio.SSLStream[trio.SocketStream]:
        """The server side of an accepted connection (handshake not done yet)."""
        if self.server is None:
            raise ValueError("a TLS listener needs a certificate and key")
        return trio.SSLStream(stream, self.server, server_side=True, https_compatible=True)

    def client_stream(self, stream: trio.SocketStream, server_name: str) -> trio.SSLStream[trio.SocketStream]:
        """The client side of a connection we opened to ``server_name`` (a host name or an IP literal)."""
        # Python's ssl sends no SNI for an IP literal and then matches it against the IP address SANs.
        return trio.SSLStream(stream, self.client, server_hostname=server_name, https_compatible=True)

    # -- building contexts --

    def _server_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = tls_version(s.min_version)
        ctx.load_cert_chain(s.cert, s.key or None)
        if s.verify_client:
            if s.ca:
                ctx.load_verify_locations(cafile=s.ca)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _client_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.ca or None)
        ctx.minimum_version = tls_version(s.min_version)
        if not s.verify_server:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if s.cert:
            ctx.load_cert_chain(s.cert, s.key or None)
        return ctx
