"""Tests for parsing WWW-Authenticate headers."""

from __future__ import annotations

import pytest

from apparate.registry.challenge import Challenge, parse_challenges

HUB_REALM = "https://auth.docker.io/token"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [f'Bearer realm="{HUB_REALM}",service="registry.docker.io"'],
            [
                Challenge(
                    "bearer", {"realm": HUB_REALM, "service": "registry.docker.io"}
                )
            ],
            id="bearer",
        ),
        pytest.param(
            ['Bearer realm="r",scope="repository:a/b:pull,push"'],
            [Challenge("bearer", {"realm": "r", "scope": "repository:a/b:pull,push"})],
            id="quoted-comma",
        ),
        pytest.param(
            ['Bearer realm="r",service="s", Basic realm="b"'],
            [
                Challenge("bearer", {"realm": "r", "service": "s"}),
                Challenge("basic", {"realm": "b"}),
            ],
            id="two-in-one-header",
        ),
        pytest.param(
            ['Basic realm="b"', 'Bearer realm="r"'],
            [Challenge("basic", {"realm": "b"}), Challenge("bearer", {"realm": "r"})],
            id="two-headers",
        ),
        pytest.param(
            [r'Basic realm="say \"hi\", \\ twice"'],
            [Challenge("basic", {"realm": 'say "hi", \\ twice'})],
            id="escaped-quotes",
        ),
        pytest.param(
            ["Bearer realm=https://auth.example/token,service=registry"],
            [
                Challenge(
                    "bearer",
                    {"realm": "https://auth.example/token", "service": "registry"},
                )
            ],
            id="unquoted-values",
        ),
        pytest.param(
            ['  BEARER   Realm = "r" ,\tService=s ,  , '],
            [Challenge("bearer", {"realm": "r", "service": "s"})],
            id="whitespace-and-case",
        ),
        pytest.param(
            ["Negotiate a87421000492aa874209af8bc028==, Basic realm=b"],
            [
                Challenge("negotiate", {}, token68="a87421000492aa874209af8bc028=="),
                Challenge("basic", {"realm": "b"}),
            ],
            id="token68",
        ),
        pytest.param(
            ["Basic abc="],
            [Challenge("basic", {}, token68="abc=")],
            id="token68-ending-in-equals",
        ),
        pytest.param(
            ["Basic, Bearer realm=r"],
            [Challenge("basic", {}), Challenge("bearer", {"realm": "r"})],
            id="scheme-without-params",
        ),
        pytest.param(
            ['Bearer realm="r",error="invalid_token",error_description=""'],
            [
                Challenge(
                    "bearer",
                    {"realm": "r", "error": "invalid_token", "error_description": ""},
                )
            ],
            id="empty-quoted-value",
        ),
        pytest.param(
            ['Basic realm="first", realm="second"'],
            [Challenge("basic", {"realm": "first"})],
            id="repeated-param-keeps-first",
        ),
        pytest.param([""], [], id="empty-header"),
        pytest.param([], [], id="no-headers"),
    ],
)
def test_parse_challenges(headers: list[str], expected: list[Challenge]) -> None:
    assert parse_challenges(headers) == expected


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        pytest.param(
            'Basic realm="open', "unterminated quoted string", id="unterminated"
        ),
        pytest.param('realm="r"', "comes before any scheme", id="param-first"),
        pytest.param(
            'Bearer realm="r", service=',
            "expected a scheme or parameter name",
            id="no-value",
        ),
        pytest.param("Basic (x)", "expected a scheme or parameter name", id="bad-char"),
    ],
)
def test_parse_challenges_invalid(header: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_challenges([header])

    assert repr(header) in str(caught.value)


def test_challenge_scheme_is_lowercase() -> None:
    [challenge] = parse_challenges(['BaSiC REALM="x"'])

    assert challenge.scheme == "basic"
    assert challenge.params == {"realm": "x"}
