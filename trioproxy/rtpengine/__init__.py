"""rtpengine control over its ng protocol: the codec and flag mapping (``ng``), SDP helpers (``sdp``), and
the UDP client with several weighted instances and failover (``client``). ``KSR.rtpengine`` is in
``trioproxy.routing.ksr_rtpengine``."""

from __future__ import annotations

from .client import Instance, NoInstance, RtpengineClient, parse_instance
from .ng import NgError, ParsedFlags, decode_message, encode_message, new_cookie, parse_flags
from .sdp import Media, SdpSummary, has_sdp, summarize

__all__ = [
    "Instance",
    "Media",
    "NgError",
    "NoInstance",
    "ParsedFlags",
    "RtpengineClient",
    "SdpSummary",
    "decode_message",
    "encode_message",
    "has_sdp",
    "new_cookie",
    "parse_flags",
    "parse_instance",
    "summarize",
]
