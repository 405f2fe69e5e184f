"""Bencoding (the BitTorrent encoding rtpengine's ng protocol uses): byte strings, integers, lists and
dictionaries with byte-string keys, sorted on output.

Decoding is strict and bounded: no leading zeros or ``-0`` in integers, no repeated keys (in any order:
rtpengine writes its keys in the order it builds them), the input must be consumed exactly, nesting is
limited to ``MAX_DEPTH``; anything else raises ``BencodeError``.
"""

from __future__ import annotations

from typing import Union

__all__ = ["MAX_DEPTH", "BencodeError", "Value", "bdecode", "bencode"]

Value = Union[bytes, int, list["Value"], dict[bytes, "Value"]]  # noqa: UP007 (a recursive alias)
MAX_DEPTH = 32


class BencodeError(ValueError):
    """Data that is not one well-formed bencoded value."""


def bencode(value: Value) -> bytes:
    """The bencoding of ``value``."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Value, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError("nested too deeply")
    if isinstance(value, bool):
        raise BencodeError("booleans have no bencoding")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        for key in sorted(value):
            if not isinstance(key, bytes):
                raise BencodeError("dictionary keys are byte strings")
            _encode(key, out, depth + 1)
            _encode(value[key], out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Value:
    """The value ``data`` encodes (all of it)."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def _int(data: bytes, start: int, end: int) -> int:
    text = data[start:end]
    digits = text[1:] if text.startswith(b"-") else text
    if not digits.isdigit() or (digits.startswith(b"0") and len(digits) > 1) or text == b"-0":
        raise BencodeError(f"bad integer at offset {start}")
    return int(text)


def _decode(data: bytes, i: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise BencodeError("nested too deeply")
    if i >= len(data):
        raise BencodeError("truncated")
    c = data[i : i + 1]
    if c == b"i":
        end = data.find(b"e", i + 1)
        if end < 0:
            raise BencodeError("truncated integer")
        return _int(data, i + 1, end), end + 1
    if c == b"l":
        items: list[Value] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i, depth + 1)
            items.append(item)
        return items, i + 1
    if c == b"d":
        out: dict[bytes, Value] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a byte string")
            if key in out:
                raise BencodeError("dictionary key repeated")
            out[key], i = _decode(data, i, depth + 1)
        return out, i + 1
    if c.isdigit():
        colon = data.find(b":", i)
        if colon < 0:
            raise BencodeError("truncated string length")
        length = _int(data, i, colon)
        end = colon + 1 + length
        if end > len(data):
            raise BencodeError("truncated string")
        return data[colon + 1 : end], end
    raise BencodeError(f"unexpected byte {c!r} at offset {i}")
