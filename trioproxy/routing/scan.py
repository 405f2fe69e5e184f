"""Static checks on a script's source: the ``KSR.*`` names it uses and the route names it registers.

A small Lua lexer drops comments and strings (so a ``KSR.tm.t_rely`` in a comment is not an error) and
keeps line numbers; the checks then walk the tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field

__all__ = ["Finding", "ScanResult", "Token", "scan_source", "tokenize"]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUM_RE = re.compile(r"0[xX][0-9a-fA-F.]*(?:[pP][+-]?\d+)?|\d*\.?\d+(?:[eE][+-]?\d+)?\.?\d*")
_LONG_OPEN_RE = re.compile(r"\[(=*)\[")
_OPS = ("...", "..", "::", "<<", ">>", "//", "==", "~=", "<=", ">=")
CALLBACK_FUNCS = ("t_on_failure", "t_on_branch", "t_on_reply")


@dataclass(frozen=True, slots=True)
class Token:
    """A lexical token: ``kind`` is name, str, num or op; strings keep their raw text without quotes."""

    kind: str
    text: str
    line: int


def _long_end(src: str, i: int, eqs: str) -> int:
    end = src.find("]" + eqs + "]", i)
    return len(src) if end < 0 else end + len(eqs) + 2


def tokenize(src: str) -> Iterator[Token]:
    """Lua tokens with their line numbers; comments skipped. Malformed input ends quietly (the Lua
    compiler reports syntax errors)."""
    i, n, line = 0, len(src), 1
    if src.startswith("#"):  # a shebang line
        i = src.find("\n") if "\n" in src else n
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif src.startswith("--", i):
            m = _LONG_OPEN_RE.match(src, i + 2)
            if m:
                end = _long_end(src, m.end(), m.group(1))
            else:
                nl = src.find("\n", i)
                end = n if nl < 0 else nl
            line += src.count("\n", i, end)
            i = end
        elif c == "[" and (m := _LONG_OPEN_RE.match(src, i)):
            end = _long_end(src, m.end(), m.group(1))
            yield Token("str", src[m.end() : max(m.end(), end - len(m.group(1)) - 2)], line)
            line += src.count("\n", i, end)
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            yield Token("str", src[i + 1 : min(j, n)], line)
            line += src.count("\n", i, min(j + 1, n))
            i = j + 1
        elif c.isalpha() or c == "_":
            m = _NAME_RE.match(src, i)
            assert m is not None
            yield Token("name", m.group(), line)
            i = m.end()
        elif c.isdigit() or (c == "." and i + 1 < n and src[i + 1].isdigit()):
            m = _NUM_RE.match(src, i)
            end = m.end() if m and m.end() > i else i + 1
            yield Token("num", src[i:end], line)
            i = end
        else:
            op = next((o for o in _OPS if src.startswith(o, i)), c)
            yield Token("op", op, line)
            i += len(op)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in the source, at ``line``."""

    line: int
    message: str


@dataclass(slots=True)
class ScanResult:
    """Errors (refuse the script), warnings (report), and route names registered by string literal."""

    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    callbacks: list[tuple[str, str, int]] = field(default_factory=list)  # (function, route name, line)


def scan_source(src: str, core: Set[str], modules: Mapping[str, Set[str]]) -> ScanResult:
    """Check ``KSR.fn`` / ``KSR.mod.fn`` references against the API and collect callback names.

    ``core`` are the top-level KSR functions, ``modules`` the provided modules with their functions.
    """
    toks = list(tokenize(src))
    out = ScanResult()
    warned: set[str] = set()

    def at(k: int, kind: str, text: str | None = None) -> bool:
        return k < len(toks) and toks[k].kind == kind and (text is None or toks[k].text == text)

    for k, t in enumerate(toks):
        if t.kind != "name":
            continue
        if t.text == "KSR" and not (k > 0 and toks[k - 1].text in (".", ":")) and at(k + 1, "op", "."):
            if not at(k + 2, "name"):
                continue
            mod = toks[k + 2].text
            fn = toks[k + 4].text if at(k + 3, "op", ".") and at(k + 4, "name") else None
            if mod in modules:
                if fn is not None and fn not in modules[mod]:
                    out.errors.append(Finding(t.line, f"unknown function KSR.{mod}.{fn}"))
            elif mod not in core:
                if fn is None and at(k + 3, "op", "("):
                    out.errors.append(Finding(t.line, f"unknown function KSR.{mod}"))
                elif mod not in warned:
                    warned.add(mod)
                    out.warnings.append(
                        Finding(t.line, f"module KSR.{mod} is not provided (nil at run time)")
                    )
        elif t.text in CALLBACK_FUNCS and at(k + 1, "op", "(") and at(k + 2, "str"):
            out.callbacks.append((t.text, toks[k + 2].text, t.line))
    return out
