import pytest

from apparate.digest import Digest
from apparate.errors import InvalidReference
from apparate.reference import Reference, is_loopback

SHA = "sha256:" + "ab" * 32

# (input, canonical string, registry, repository, tag, digest, API host)
VALID = [
    (
        "alpine",
        "docker.io/library/alpine:latest",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        "registry-1.docker.io",
    ),
    (
        "alpine:3.20",
        "docker.io/library/alpine:3.20",
        "docker.io",
        "library/alpine",
        "3.20",
        None,
        "registry-1.docker.io",
    ),
    (
        "library/alpine",
        "docker.io/library/alpine:latest",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        "registry-1.docker.io",
    ),
    (
        "user/app",
        "docker.io/user/app:latest",
        "docker.io",
        "user/app",
        "latest",
        None,
        "registry-1.docker.io",
    ),
    (
        "docker.io/alpine",
        "docker.io/library/alpine:latest",
        "docker.io",
        "library/alpine",
        "latest",
        None,
        "registry-1.docker.io",
    ),
    (
        "index.docker.io/library/alpine:1",
        "docker.io/library/alpine:1",
        "docker.io",
        "library/alpine",
        "1",
        None,
        "registry-1.docker.io",
    ),
    (
        "localhost/app",
        "localhost/app:latest",
        "localhost",
        "app",
        "latest",
        None,
        "localhost",
    ),
    (
        "localhost:5000/a/b:t",
        "localhost:5000/a/b:t",
        "localhost:5000",
        "a/b",
        "t",
        None,
        "localhost:5000",
    ),
    (
        "example.com/team/app:v2",
        "example.com/team/app:v2",
        "example.com",
        "team/app",
        "v2",
        None,
        "example.com",
    ),
    (
        "Example.COM/app",
        "example.com/app:latest",
        "example.com",
        "app",
        "latest",
        None,
        "example.com",
    ),
    (
        "127.0.0.1:5000/samples/base:v1",
        "127.0.0.1:5000/samples/base:v1",
        "127.0.0.1:5000",
        "samples/base",
        "v1",
        None,
        "127.0.0.1:5000",
    ),
    ("[::1]:5000/a:t", "[::1]:5000/a:t", "[::1]:5000", "a", "t", None, "[::1]:5000"),
    (
        "[fe80::1]/a",
        "[fe80::1]/a:latest",
        "[fe80::1]",
        "a",
        "latest",
        None,
        "[fe80::1]",
    ),
    (
        f"alpine@{SHA}",
        f"docker.io/library/alpine@{SHA}",
        "docker.io",
        "library/alpine",
        None,
        SHA,
        "registry-1.docker.io",
    ),
    (
        f"example.com/app:v1@{SHA}",
        f"example.com/app:v1@{SHA}",
        "example.com",
        "app",
        "v1",
        SHA,
        "example.com",
    ),
    (
        "a.b/c__d/e-f--g.h:tag_1.x-y",
        "a.b/c__d/e-f--g.h:tag_1.x-y",
        "a.b",
        "c__d/e-f--g.h",
        "tag_1.x-y",
        None,
        "a.b",
    ),
]


@pytest.mark.parametrize(
    "text, canonical, registry, repository, tag, digest, api_host", VALID
)
def test_reference_parses(text, canonical, registry, repository, tag, digest, api_host):
    ref = Reference.parse(text)

    assert str(ref) == canonical
    assert ref.registry == registry
    assert ref.repository == repository
    assert ref.tag == tag
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert ref.api_host == api_host


def test_reference_lookup_prefers_digest():
    assert Reference.parse(f"example.com/app:v1@{SHA}").lookup == SHA
    assert Reference.parse("example.com/app:v1").lookup == "v1"


INVALID = [
    ("", "empty"),
    (" alpine", "whitespace"),
    ("Alpine", "lowercase"),
    ("example.com/App", "lowercase"),
    ("alpine:", "invalid tag"),
    ("alpine:-x", "invalid tag"),
    ("alpine:" + "x" * 129, "invalid tag"),
    ("alpine@sha256:abc", "invalid sha256 digest"),
    ("alpine@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("alpine@", "invalid digest"),
    ("example.com/", "name is missing"),
    ("example.com//app", "invalid name component"),
    ("a/-b", "invalid name component"),
    ("a_/b", "invalid name component"),
    ("exa_mple.com/app", "bad host"),
    ("example.com:99999/app", "bad port"),
    ("example.com:port/app", "bad port"),
    ("[::1/app", "bad host"),
    ("[zz::1]:5000/app", "not an IPv6 address"),
    ("example.com/" + "a" * 250, "longer than 255"),
    ("a.com\n/foo:tag", "bad host"),
    ("foo\n/bar:tag", "invalid name component"),
    ("alpine:t\u00e5g", "invalid tag"),
    ("alpine:tag\n", "whitespace"),
    ("[fe80::1%25eth0]/a", "not an IPv6 address"),
    ("alpine@sha256:" + "a" * 64 + "\n", "whitespace"),
    ("alpine@sha256:" + "a" * 63 + "\n0", "invalid digest"),
    ("http://127.0.0.1:5000/team/app:v1", "drop 'http://'"),
    ("https://example.com/app", "drop 'https://'"),
]


@pytest.mark.parametrize("text, reason", INVALID)
def test_reference_rejects(text, reason):
    with pytest.raises(InvalidReference) as caught:
        Reference.parse(text)

    assert reason in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    "host, expected",
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("example.com", False),
        ("10.0.0.1:5000", False),
        ("[fe80::1]", False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected
