"""Digest authentication without I/O: RFC 7616 3.9.1 vectors, challenges, credentials parsing, signed
nonces on a fake clock, nonce-count replay memory."""

from __future__ import annotations

import pytest

from trioproxy.auth import (
    NonceCounts,
    Nonces,
    NonceState,
    build_challenge,
    digest_response,
    ha1,
    parse_credentials,
    verify_response,
)

# RFC 7616 3.9.1.
USER, PASSWORD, REALM = "Mufasa", "Circle of Life", "http-auth@example.org"
NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
URI = "/dir/index.html"
VECTORS = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def _header(algorithm: str, response: str, nc: str = "00000001") -> str:
    return (
        f'Digest username="{USER}", realm="{REALM}", uri="{URI}", algorithm={algorithm}, nonce="{NONCE}", '
        f'nc={nc}, cnonce="{CNONCE}", qop=auth, response="{response}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_vectors(algorithm: str) -> None:
    h = ha1(algorithm, USER, REALM, PASSWORD)
    got = digest_response(algorithm, h, "GET", URI, NONCE, qop="auth", nc="00000001", cnonce=CNONCE)
    assert got == VECTORS[algorithm]
    creds = parse_credentials(_header(algorithm, VECTORS[algorithm]))
    assert creds is not None
    assert (creds.username, creds.realm, creds.algorithm, creds.nc_value) == (USER, REALM, algorithm, 1)
    assert verify_response(creds, h, "GET")
    assert not verify_response(creds, ha1(algorithm, USER, REALM, "wrong"), "GET")
    assert not verify_response(creds, h, "POST")  # the method is part of HA2


def test_responses_without_qop_or_with_a_bad_nc_are_refused() -> None:
    h = ha1("MD5", USER, REALM, PASSWORD)
    legacy = digest_response("MD5", h, "GET", URI, NONCE)
    creds = parse_credentials(
        f'Digest username="{USER}", realm="{REALM}", nonce="{NONCE}", uri="{URI}", response="{legacy}"'
    )
    assert creds is not None and not verify_response(creds, h, "GET")
    bad_nc = parse_credentials(_header("MD5", VECTORS["MD5"], nc="1"))
    assert bad_nc is not None and bad_nc.nc_value is None and not verify_response(bad_nc, h, "GET")


@pytest.mark.parametrize(
    "value",
    [
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digest username="a"',
        'Digest username="a, realm=',
        "Digest ,,,",
        "x" * 5000,
        "",
    ],
)
def test_unusable_credentials_parse_to_none(value: str) -> None:
    assert parse_credentials(value) is None


def test_quoted_values_keep_commas_and_escapes() -> None:
    creds = parse_credentials(
        'Digest username="a\\"b", realm="r,1", nonce="n", uri="sip:x@y;p=1,2", response="ABC", algorithm=sha-256'
    )
    assert creds is not None
    assert (creds.username, creds.realm, creds.uri, creds.response, creds.algorithm) == (
        'a"b',
        "r,1",
        "sip:x@y;p=1,2",
        "abc",
        "SHA-256",
    )


def test_challenge_text() -> None:
    text = build_challenge("example.com", "abc", "SHA-256", stale=True)
    assert text == 'Digest realm="example.com", nonce="abc", algorithm=SHA-256, qop="auth", stale=true'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_nonces_expire_and_are_bound_to_realm_and_secret() -> None:
    clock = FakeClock()
    nonces = Nonces(b"k" * 32, expires=30.0, clock=clock)
    n = nonces.mint("example.com")
    assert nonces.check(n, "example.com") is NonceState.VALID
    assert nonces.check(n, "other.com") is NonceState.INVALID
    assert Nonces(b"x" * 32, clock=clock).check(n, "example.com") is NonceState.INVALID
    assert nonces.timestamp(n) == clock.now
    clock.now += 29.0
    assert nonces.check(n, "example.com") is NonceState.VALID
    clock.now += 2.0
    assert nonces.check(n, "example.com") is NonceState.STALE
    tampered = ("A" if n[0] != "A" else "B") + n[1:]
    assert nonces.check(tampered, "example.com") is NonceState.INVALID
    assert nonces.check("short", "example.com") is NonceState.INVALID
    assert nonces.check("!" * 43, "example.com") is NonceState.INVALID


def test_nonce_count_must_grow() -> None:
    counts = NonceCounts()
    assert counts.use("n1", 10.0, 1) is NonceState.VALID
    assert counts.use("n1", 10.0, 1) is NonceState.INVALID  # replay
    assert counts.use("n1", 10.0, 2) is NonceState.VALID
    assert counts.use("n1", 10.0, 2) is NonceState.INVALID
    assert counts.use("n2", 11.0, 1) is NonceState.VALID  # counts are per nonce


def test_nonce_count_memory_is_bounded_and_forgotten_nonces_are_stale() -> None:
    counts = NonceCounts(capacity=3)
    for i in range(5):
        assert counts.use(f"n{i}", float(i), 1) is NonceState.VALID
    assert len(counts) == 3
    # n0 and n1 were forgotten: a replay of them is not let through but answered as stale.
    assert counts.use("n0", 0.0, 1) is NonceState.STALE
    assert counts.use("n1", 1.0, 5) is NonceState.STALE
    assert counts.use("n4", 4.0, 1) is NonceState.INVALID
    counts.forget_older_than(4.0)
    assert len(counts) == 1
