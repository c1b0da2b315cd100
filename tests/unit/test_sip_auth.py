from __future__ import annotations

import re

import pytest

from sip.auth import AuthError, Challenge, best, parse_challenge, response


def field(value: str, name: str) -> str:
    m = re.search(rf'{name}="?([^",]+)"?', value)
    assert m is not None
    return m.group(1)


def test_rfc2617_md5_qop_auth_vector() -> None:
    ch = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = response(ch, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", cnonce="0a4f113b")
    assert field(value, "response") == "6629fae49393a05397450978507c4ef1"
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value and "nc=00000001" in value


def test_rfc7616_sha256_vector() -> None:
    ch = parse_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    value = response(
        ch, "Mufasa", "Circle of Life", "GET", "/dir/index.html", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    )
    assert field(value, "response") == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_no_qop_and_strongest_choice() -> None:
    ch = Challenge(realm="asterisk", nonce="abc")
    assert "qop" not in response(ch, "u", "p", "INVITE", "sip:1@pbx")
    chosen = best(['Digest realm="r", nonce="n", algorithm=MD5', 'Digest realm="r", nonce="m", algorithm=SHA-256'])
    assert chosen.algorithm == "SHA-256"
    with pytest.raises(AuthError):
        best(['Basic realm="x"', 'Digest realm="r", nonce="n", algorithm=SHA-512-256'])
