"""Regular expressions supplied by route scripts, run by RE2 (linear time, no catastrophic backtracking).

Every regex a script hands to a KSR function (``KSR.textops.search``, ``KSR.tm.t_check_status``,
``KSR.rr.check_route_param``, ``KSR.htable.sht_match_name`` ...) goes through this module instead of
Python's backtracking ``re``: RE2 matches in time linear in the subject, so a pattern such as ``(a*)*b``
on a long request-controlled value cannot hold the event loop. Kamailio's regexes are POSIX extended;
RE2 accepts that syntax (and Perl classes such as ``\\d``); back-references and look-around, which have no
linear-time algorithm, are refused as an invalid regex.

The pattern and the subject are capped in length (``MAX_PATTERN`` characters, ``MAX_SUBJECT`` characters)
and compiled regexes are cached. Errors are ``ValueError`` with a message naming the cause, which the
script sees as an error raised by its KSR call.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

__all__ = ["MAX_PATTERN", "MAX_SUBJECT", "compile_regex", "fullmatch", "search"]

MAX_PATTERN = 4096
MAX_SUBJECT = 1024 * 1024
# RE2's memory for one compiled program (the DFA cache included); beyond it RE2 falls back to slower,
# still linear, matching or refuses the pattern.
_MAX_MEM = 8 << 20


def _options() -> Any:
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = _MAX_MEM
    return opts


_OPTIONS = _options()


@lru_cache(maxsize=512)
def _compile(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        detail = e.args[0] if e.args else e
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(f"invalid regex {pattern!r}: {detail}") from None


def compile_regex(pattern: str) -> Any:
    """The compiled RE2 program for ``pattern`` (cached); ``ValueError`` if too long or invalid."""
    if not isinstance(pattern, str):
        raise ValueError("regex must be a string")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"regex longer than {MAX_PATTERN} characters")
    return _compile(pattern)


def _subject(text: str) -> str:
    if len(text) > MAX_SUBJECT:
        raise ValueError(f"regex subject longer than {MAX_SUBJECT} characters")
    return text


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches anywhere in ``text``."""
    return compile_regex(pattern).search(_subject(text)) is not None


def fullmatch(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches the whole of ``text``."""
    return compile_regex(pattern).fullmatch(_subject(text)) is not None
