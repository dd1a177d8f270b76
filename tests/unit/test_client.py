"""The registry client against misbehaving servers, played by respx."""

import contextlib
import hashlib
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import respx
import zstandard
from cryptography.hazmat.primitives import serialization

from apparate.digest import Digest
from apparate.errors import (
    ApparateError,
    DigestMismatch,
    InsecureRedirect,
    InvalidResponse,
    NotFound,
    RateLimited,
    RegistryUnreachable,
    ServerError,
    TransferTimedOut,
    TruncatedBody,
    UsageError,
)
from apparate.manifest import OCI_MANIFEST, Descriptor
from apparate.reference import Reference
from apparate.registry import pace
from apparate.registry.client import (
    MAX_ATTEMPTS,
    Endpoint,
    RangeFetchStopped,
    RangesUnsupported,
    RegistryClient,
)
from apparate.registry.credentials import CredentialStore
from apparate.registry.transport import TransportSettings
from tests.testbed import certs
from tests.unit.test_client_failures import RawServer

HOST = "registry.example"
BLOB = bytes(range(256)) * 2000
BLOB_DIGEST = Digest("sha256", hashlib.sha256(BLOB).hexdigest())
BLOB_PATH = f"https://{HOST}/v2/team/app/blobs/{BLOB_DIGEST}"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "x", "digest": str(BLOB_DIGEST), "size": 1},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = Digest.of(MANIFEST)
MANIFEST_URL = f"https://{HOST}/v2/team/app/manifests/v1"


class BrokenStream(httpx.SyncByteStream):
    """A body that sends ``data`` and then drops the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self):
        yield self.data
        raise httpx.ReadError("connection reset by peer")


class UnreadableStream(httpx.SyncByteStream):
    """A body that must not be read (as distribution's 416 body)."""

    def __iter__(self):
        raise AssertionError("the client read a body it should have dropped")
        yield b""


PAUSES: list[float] = []


@pytest.fixture
def client(tmp_path):
    PAUSES.clear()
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(certs_dirs=())
    reference = Reference.parse(f"{HOST}/team/app:v1")
    with RegistryClient(reference, settings, credentials, sleep=PAUSES.append) as c:
        yield c


def blob_descriptor(size: int = len(BLOB)) -> Descriptor:
    return Descriptor("application/octet-stream", BLOB_DIGEST, size)


def fetch(client: RegistryClient, descriptor: Descriptor | None = None) -> bytes:
    received: list[bytes] = []
    client.fetch_blob(descriptor or blob_descriptor(), received.append, "blob x")
    return b"".join(received)


def range_start(request: httpx.Request) -> int:
    header = request.headers.get("Range", "bytes=0-")
    return int(header.removeprefix("bytes=").split("-")[0])


def partial(request: httpx.Request) -> httpx.Response:
    start = range_start(request)
    headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
    return httpx.Response(206, headers=headers, content=BLOB[start:])


# Each row: what the server sends for successive blob requests, and the Range
# header values the client must have sent.
RESUME_CASES = {
    "resumes with range after a drop": (
        [httpx.Response(200, stream=BrokenStream(BLOB[:1000])), partial],
        [None, "bytes=1000-"],
    ),
    "resumes twice": (
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:1000])),
            lambda request: httpx.Response(
                206,
                headers={"Content-Range": f"bytes 1000-{len(BLOB) - 1}/{len(BLOB)}"},
                stream=BrokenStream(BLOB[1000:5000]),
            ),
            partial,
        ],
        [None, "bytes=1000-", "bytes=5000-"],
    ),
    "server ignores range and sends everything": (
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:1000])),
            httpx.Response(200, content=BLOB),
        ],
        [None, "bytes=1000-"],
    ),
    "reconnect fails once after a drop": (
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:1000])),
            httpx.ConnectError("connection refused"),
            partial,
        ],
        [None, "bytes=1000-", "bytes=1000-"],
    ),
    "short 206 body is resumed": (
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:1000])),
            httpx.Response(
                206,
                headers={"Content-Range": f"bytes 1000-{len(BLOB) - 1}/{len(BLOB)}"},
                content=BLOB[1000:3000],
            ),
            partial,
        ],
        [None, "bytes=1000-", "bytes=3000-"],
    ),
    "server answers 416 to an open range": (
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:1000])),
            httpx.Response(
                416,
                headers={"Content-Length": str(len(BLOB))},
                stream=UnreadableStream(),
            ),
            httpx.Response(200, content=BLOB),
        ],
        [None, "bytes=1000-", None],
    ),
}


def bad_206(content_range: str | None, **headers: str) -> httpx.Response:
    """A 206 that is not the requested bytes of the blob; its body must not be read."""
    if content_range is not None:
        headers["Content-Range"] = content_range
    return httpx.Response(206, headers=headers, stream=UnreadableStream())


REST = len(BLOB) - 1000
# 206 responses to a range from byte 1000 that are not that range of the blob.
BAD_206 = {
    "range from another byte": bad_206(f"bytes 1005-{len(BLOB) - 1}/{len(BLOB)}"),
    "no Content-Range": bad_206(None),
    "multipart body": bad_206(
        f"bytes 1000-{len(BLOB) - 1}/{len(BLOB)}",
        **{"Content-Type": "multipart/byteranges; boundary=x"},
    ),
    "blob of another size": bad_206(f"bytes 1000-{len(BLOB) - 1}/{len(BLOB) + 7}"),
    "range past the blob's end": bad_206(f"bytes 1000-{len(BLOB)}/*"),
    "body longer than its range": bad_206(
        f"bytes 1000-{len(BLOB) - 1}/{len(BLOB)}", **{"Content-Length": str(REST + 9)}
    ),
    "encoded body of another length": bad_206(
        f"bytes 1000-{len(BLOB) - 1}/{len(BLOB)}",
        **{"Content-Encoding": "gzip", "Content-Length": str(REST - 9)},
    ),
}
for name, answer in BAD_206.items():
    RESUME_CASES[f"whole blob after a 206 with {name}"] = (
        [httpx.Response(200, stream=BrokenStream(BLOB[:1000])), answer,
         httpx.Response(200, content=BLOB)],
        [None, "bytes=1000-", None],
    )  # fmt: skip


@pytest.mark.parametrize("answers, ranges", RESUME_CASES.values(), ids=RESUME_CASES)
@respx.mock
def test_fetch_blob_resumes(client, answers, ranges):
    route = respx.get(BLOB_PATH).mock(side_effect=answers)

    assert fetch(client) == BLOB

    sent = [call.request.headers.get("Range") for call in route.calls]
    assert sent == ranges


@respx.mock
def test_fetch_blob_reads_raw_bytes(client):
    # A server may label a compressed blob with Content-Encoding; the digest
    # is of the bytes as sent, so they must not be decoded.
    raw = zstandard.ZstdCompressor().compress(BLOB)
    descriptor = Descriptor("application/octet-stream", Digest.of(raw), len(raw))
    path = f"https://{HOST}/v2/team/app/blobs/{descriptor.digest}"
    route = respx.get(path).mock(
        return_value=httpx.Response(
            200, stream=httpx.ByteStream(raw), headers={"Content-Encoding": "zstd"}
        )
    )

    assert fetch(client, descriptor) == raw

    assert route.calls[0].request.headers["Accept-Encoding"] == "identity"


FAILING_BLOB_CASES = {
    "corrupt body": (httpx.Response(200, content=b"x" * len(BLOB)), DigestMismatch),
    # Bodies without Content-Length, so only their bytes tell the length.
    "longer body": (
        httpx.Response(200, stream=httpx.ByteStream(BLOB + b"x")),
        DigestMismatch,
    ),
    "short body": (
        httpx.Response(200, stream=httpx.ByteStream(BLOB[:-1])),
        TruncatedBody,
    ),
    "declared length too short": (
        httpx.Response(200, content=b"<html>log in</html>"),
        DigestMismatch,
    ),
    "declared length too long": (
        httpx.Response(200, content=BLOB + b"x"),
        DigestMismatch,
    ),
    "not found": (
        httpx.Response(
            404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}
        ),
        NotFound,
    ),
    "server error": (httpx.Response(503, text="maintenance"), ServerError),
    "rate limited": (httpx.Response(429, text="slow down"), RateLimited),
    "keeps dropping": (httpx.ReadError("reset"), TruncatedBody),
}


@pytest.mark.parametrize(
    "answer, error", FAILING_BLOB_CASES.values(), ids=FAILING_BLOB_CASES
)
@respx.mock
def test_fetch_blob_fails(client, answer, error):
    respx.get(BLOB_PATH).mock(side_effect=lambda request: _raise_or_return(answer))

    with pytest.raises(error) as caught:
        fetch(client)

    assert "blob x" in str(caught.value)


def _raise_or_return(answer):
    if isinstance(answer, Exception):
        raise answer
    return answer


@respx.mock
def test_fetch_blob_unreachable_at_start_fails_at_once(client):
    route = respx.get(BLOB_PATH).mock(side_effect=httpx.ConnectError("refused"))

    with pytest.raises(RegistryUnreachable, match="cannot connect"):
        fetch(client)

    assert route.call_count == 1


@respx.mock
def test_fetch_blob_stops_retrying_without_progress(client):
    route = respx.get(BLOB_PATH).mock(side_effect=httpx.ReadError("reset"))

    with pytest.raises(TruncatedBody, match="failed 5 times"):
        fetch(client)

    assert route.call_count == 5
    assert PAUSES == [0.5, 1.0, 2.0, 4.0]


@respx.mock
def test_rate_limit_reports_retry_after_once(client):
    body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit"}]}
    route = respx.get(MANIFEST_URL).mock(
        return_value=httpx.Response(429, json=body, headers={"Retry-After": "120"})
    )

    with pytest.raises(RateLimited) as caught:
        client.get_manifest("v1", None)

    assert "retry after 120 s" in str(caught.value)
    assert "pull rate limit" in str(caught.value)
    assert route.call_count == 1


def manifest_answer(body: bytes = MANIFEST, **headers: str) -> httpx.Response:
    return httpx.Response(
        200, content=body, headers={"Content-Type": OCI_MANIFEST, **headers}
    )


@respx.mock
def test_get_manifest_verifies_header_digest(client):
    respx.get(MANIFEST_URL).mock(
        return_value=manifest_answer(**{"Docker-Content-Digest": str(BLOB_DIGEST)})
    )

    with pytest.raises(DigestMismatch, match="manifest v1"):
        client.get_manifest("v1", None)


@respx.mock
def test_get_manifest_verifies_requested_digest(client):
    url = f"https://{HOST}/v2/team/app/manifests/{BLOB_DIGEST}"
    respx.get(url).mock(return_value=manifest_answer())

    with pytest.raises(DigestMismatch):
        client.get_manifest(str(BLOB_DIGEST), BLOB_DIGEST)


@respx.mock
def test_get_manifest_returns_body_and_type(client):
    route = respx.get(MANIFEST_URL).mock(return_value=manifest_answer())

    fetched = client.get_manifest("v1", None)

    assert fetched.body == MANIFEST
    assert fetched.digest == MANIFEST_DIGEST
    assert fetched.media_type == OCI_MANIFEST
    accept = route.calls[0].request.headers["Accept"]
    for media_type in (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert media_type in accept


LIMIT = 4 * 1024 * 1024


def big_manifest(size: int) -> bytes:
    padding = size - len(b'{"x":""}')
    return b'{"x":"' + b"a" * padding + b'"}'


@respx.mock
def test_get_manifest_accepts_four_mebibytes(client):
    body = big_manifest(LIMIT)
    respx.get(MANIFEST_URL).mock(return_value=manifest_answer(body))

    assert len(client.get_manifest("v1", None).body) == LIMIT


@respx.mock
def test_get_manifest_rejects_large_length_unread(client):
    respx.get(MANIFEST_URL).mock(
        return_value=httpx.Response(
            200,
            headers={"Content-Length": str(LIMIT + 1)},
            stream=UnreadableStream(),
        )
    )

    with pytest.raises(InvalidResponse, match="over the 4194304-byte limit"):
        client.get_manifest("v1", None)


@respx.mock
def test_get_manifest_rejects_large_chunked_body(client):
    def chunks():
        for _ in range(5):
            yield b"a" * (1024 * 1024)

    respx.get(MANIFEST_URL).mock(return_value=httpx.Response(200, content=chunks()))

    with pytest.raises(InvalidResponse, match="over the 4194304-byte limit"):
        client.get_manifest("v1", None)


HEAD_CASES = {
    "digest header": (
        httpx.Response(200, headers={"Docker-Content-Digest": str(MANIFEST_DIGEST)}),
        MANIFEST_DIGEST,
    ),
    "no digest header": (httpx.Response(200), None),
    "method not allowed": (httpx.Response(405), None),
    "malformed digest header": (
        httpx.Response(200, headers={"Docker-Content-Digest": "sha256:zz"}),
        None,
    ),
}


@pytest.mark.parametrize("answer, expected", HEAD_CASES.values(), ids=HEAD_CASES)
@respx.mock
def test_head_manifest(client, answer, expected):
    respx.head(MANIFEST_URL).mock(return_value=answer)

    assert client.head_manifest("v1") == expected


@respx.mock
def test_not_found_carries_registry_message(client):
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
    respx.get(MANIFEST_URL).mock(return_value=httpx.Response(404, json=body))

    with pytest.raises(NotFound) as caught:
        client.get_manifest("v1", None)

    assert "registry.example/team/app:v1" in str(caught.value)
    assert "MANIFEST_UNKNOWN: manifest unknown" in str(caught.value)


@respx.mock
def test_redirect_to_other_origin_drops_authorization(client):
    storage = "https://storage.example/blob?sig=1"
    respx.get(BLOB_PATH).mock(
        return_value=httpx.Response(307, headers={"Location": storage})
    )
    target = respx.get(storage).mock(return_value=httpx.Response(200, content=BLOB))
    client._http.headers["Authorization"] = "Bearer secret"

    assert fetch(client) == BLOB

    assert "Authorization" not in target.calls[0].request.headers
    assert target.calls[0].request.headers["Accept-Encoding"] == "identity"


@respx.mock
def test_redirect_to_plain_http_is_refused(client):
    storage = "http://storage.example/blob?sig=secret"
    respx.get(BLOB_PATH).mock(
        return_value=httpx.Response(307, headers={"Location": storage})
    )
    target = respx.get(storage).mock(return_value=httpx.Response(200, content=BLOB))

    with pytest.raises(InsecureRedirect) as caught:
        fetch(client)

    assert "storage.example" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert target.call_count == 0


@pytest.mark.parametrize(
    "retry_after, expected",
    [
        ("120", "retry after 120 s"),
        ("Fri, 31 Dec 2027 23:59:59 GMT", "retry after Fri, 31 Dec 2027 23:59:59 GMT)"),
    ],
)
@respx.mock
def test_rate_limit_retry_after_forms(client, retry_after, expected):
    respx.get(MANIFEST_URL).mock(
        return_value=httpx.Response(429, headers={"Retry-After": retry_after})
    )

    with pytest.raises(
        RateLimited, match=expected.replace("(", r"\(").replace(")", r"\)")
    ):
        client.get_manifest("v1", None)


@respx.mock
def test_redirect_on_same_origin_keeps_authorization(client):
    same = f"https://{HOST}/storage/blob"
    respx.get(BLOB_PATH).mock(
        return_value=httpx.Response(307, headers={"Location": same})
    )
    target = respx.get(same).mock(return_value=httpx.Response(200, content=BLOB))
    client._http.headers["Authorization"] = "Bearer secret"

    assert fetch(client) == BLOB

    assert target.calls[0].request.headers["Authorization"] == "Bearer secret"


def loopback_client(
    tmp_path, host: str, insecure: frozenset = frozenset(), plain_first: bool = False
):
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(insecure_registries=insecure, certs_dirs=())
    return RegistryClient(
        Reference.parse(f"{host}/app:v1"), settings, credentials,
        plain_http_first=plain_first,
    )  # fmt: skip


@respx.mock
def test_plain_http_fallback_for_loopback(tmp_path):
    respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=httpx.ConnectError("wrong version number")
    )
    plain = respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=manifest_answer()
    )

    with loopback_client(tmp_path, "127.0.0.1:5000") as client:
        assert client.get_manifest("v1", None).body == MANIFEST

    assert plain.call_count == 1


@respx.mock
def test_plain_http_only_when_allowed(tmp_path):
    respx.get("https://insecure.example:5000/v2/app/manifests/v1").mock(
        side_effect=httpx.ConnectError("wrong version number")
    )
    plain = respx.get("http://insecure.example:5000/v2/app/manifests/v1").mock(
        return_value=manifest_answer()
    )

    with (
        loopback_client(tmp_path, "insecure.example:5000") as client,
        pytest.raises(RegistryUnreachable, match="cannot connect"),
    ):
        client.get_manifest("v1", None)
    with loopback_client(
        tmp_path, "insecure.example:5000", frozenset({"insecure.example:5000"})
    ) as c:
        assert c.get_manifest("v1", None).body == MANIFEST

    assert plain.call_count == 1


@respx.mock
def test_plain_first_client_uses_http(tmp_path):
    secure = respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=httpx.ConnectError("wrong version number")
    )
    plain = respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=manifest_answer()
    )

    with loopback_client(tmp_path, "127.0.0.1:5000", plain_first=True) as client:
        assert client.get_manifest("v1", None).body == MANIFEST
        assert client.scheme == "http"

    assert (secure.call_count, plain.call_count) == (0, 1)


# How a TLS port meets a plain HTTP request: Go servers respond with 400,
# and others close the connection without responding.
PLAIN_ON_TLS_PORT_CASES = {
    "responds 400": httpx.Response(400, text="Client sent an HTTP request"),
    "drops connection": httpx.ReadError("connection reset by peer"),
}


@pytest.mark.parametrize(
    "plain_response", PLAIN_ON_TLS_PORT_CASES.values(), ids=PLAIN_ON_TLS_PORT_CASES
)
@respx.mock
def test_plain_first_moves_to_https(tmp_path, plain_response):
    plain = respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=[plain_response]
    )
    secure = respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=manifest_answer()
    )

    with loopback_client(tmp_path, "127.0.0.1:5000", plain_first=True) as client:
        assert client.get_manifest("v1", None).body == MANIFEST
        assert client.scheme == "https"

    assert plain.call_count == 1
    assert secure.call_count == 1


@respx.mock
def test_plain_400_kept_when_https_fails(tmp_path):
    plain = respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=httpx.Response(
            400, json={"errors": [{"code": "NAME_INVALID", "message": "bad name"}]}
        )
    )
    respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=httpx.ConnectError("wrong version number")
    )

    client = loopback_client(tmp_path, "127.0.0.1:5000", plain_first=True)
    with client, pytest.raises(ApparateError, match="bad name"):
        client.get_manifest("v1", None)

    assert plain.call_count == 2


def fetch_range(client: RegistryClient, start: int, end: int) -> bytes:
    received = bytearray(end - start)

    def place(offset: int, data: bytes) -> None:
        received[offset - start : offset - start + len(data)] = data

    client.fetch_range(blob_descriptor(), start, end, place, "blob x")
    return bytes(received)


@respx.mock
def test_fetch_range_resumes_after_the_last_byte(client):
    def partial_range(request: httpx.Request) -> httpx.Response:
        first, last = request.headers["Range"].removeprefix("bytes=").split("-")
        start, end = int(first), int(last) + 1
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(BLOB)}"}
        if start == 100:
            return httpx.Response(
                206, headers=headers, stream=BrokenStream(BLOB[100:600])
            )
        return httpx.Response(206, headers=headers, content=BLOB[start:end])

    route = respx.get(BLOB_PATH).mock(side_effect=partial_range)

    assert fetch_range(client, 100, 5000) == BLOB[100:5000]

    sent = [call.request.headers["Range"] for call in route.calls]
    assert sent == ["bytes=100-4999", "bytes=600-4999"]


@respx.mock
def test_fetch_range_survives_a_refused_reconnect(client):
    headers = {"Content-Range": f"bytes 100-4999/{len(BLOB)}"}
    route = respx.get(BLOB_PATH).mock(
        side_effect=[
            httpx.Response(206, headers=headers, stream=BrokenStream(BLOB[100:600])),
            httpx.ConnectError("connection refused"),
            ranged,
        ]
    )

    assert fetch_range(client, 100, 5000) == BLOB[100:5000]

    sent = [call.request.headers["Range"] for call in route.calls]
    assert sent == ["bytes=100-4999", "bytes=600-4999", "bytes=600-4999"]
    assert PAUSES == [0.5]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, stream=UnreadableStream()),
        httpx.Response(
            416, headers={"Content-Length": "999"}, stream=UnreadableStream()
        ),
        # A 206 whose Content-Range is wrong or missing. The caller then
        # fetches the layer whole instead of failing the pull.
        httpx.Response(
            206,
            headers={"Content-Range": f"bytes 5-104/{len(BLOB)}"},
            stream=UnreadableStream(),
        ),
        httpx.Response(206, stream=UnreadableStream()),
    ],
)
@respx.mock
def test_fetch_range_unsupported_is_not_read(client, answer):
    route = respx.get(BLOB_PATH).mock(return_value=answer)

    with pytest.raises(RangesUnsupported):
        fetch_range(client, 0, 100)

    assert route.call_count == 1


# 206 responses to bytes 0-99 whose headers contradict the range or the blob.
BAD_RANGE_206 = {
    "multipart body": bad_206(
        f"bytes 0-99/{len(BLOB)}",
        **{"Content-Type": "multipart/byteranges; boundary=x"},
    ),
    "blob of another size": bad_206(f"bytes 0-99/{len(BLOB) + 7}"),
    "body longer than its range": bad_206(
        f"bytes 0-99/{len(BLOB)}", **{"Content-Length": "109"}
    ),
    "encoded body of another length": bad_206(
        f"bytes 0-99/{len(BLOB)}",
        **{"Content-Encoding": "gzip", "Content-Length": "91"},
    ),
}


@pytest.mark.parametrize("answer", BAD_RANGE_206.values(), ids=BAD_RANGE_206)
@respx.mock
def test_fetch_range_contradicting_206_is_not_read(client, answer):
    # Its bytes would be written as the blob's: the multipart boundaries, the
    # gzip stream or another blob's bytes, which only later checks would catch.
    route = respx.get(BLOB_PATH).mock(return_value=answer)

    with pytest.raises(RangesUnsupported):
        fetch_range(client, 0, 100)

    assert route.call_count == 1


@respx.mock
def test_range_body_past_its_content_range_is_cut(client):
    # Without a Content-Length, only the Content-Range marks where the range
    # ends. The bytes after it are not labelled as any part of the blob.
    headers = {"Content-Range": f"bytes 100-199/{len(BLOB)}"}
    first = httpx.Response(
        206, headers=headers, stream=httpx.ByteStream(BLOB[100:200] + b"x" * 800)
    )
    route = respx.get(BLOB_PATH).mock(side_effect=[first, ranged])

    assert fetch_range(client, 100, 1000) == BLOB[100:1000]

    sent = [call.request.headers["Range"] for call in route.calls]
    assert sent == ["bytes=100-999", "bytes=200-999"]


def ranged(request: httpx.Request) -> httpx.Response:
    start, _, end = request.headers["Range"].removeprefix("bytes=").partition("-")
    first, last = int(start), int(end)
    headers = {"Content-Range": f"bytes {first}-{last}/{len(BLOB)}"}
    return httpx.Response(206, headers=headers, content=BLOB[first : last + 1])


@respx.mock
def test_redirect_target_is_remembered_per_blob(client):
    storage = "https://storage.example/blob?sig=1"
    registry = respx.get(BLOB_PATH).mock(
        return_value=httpx.Response(307, headers={"Location": storage})
    )
    target = respx.get(storage).mock(side_effect=ranged)

    first = fetch_range(client, 0, 1000)
    second = fetch_range(client, 1000, 3000)

    assert first + second == BLOB[:3000]
    assert registry.call_count == 1
    assert target.call_count == 2


@respx.mock
def test_expired_redirect_target_asks_registry_again(client):
    old, new = "https://storage.example/old", "https://storage.example/new"
    registry = respx.get(BLOB_PATH).mock(
        side_effect=[
            httpx.Response(307, headers={"Location": old}),
            httpx.Response(307, headers={"Location": new}),
        ]
    )
    respx.get(old).mock(side_effect=[ranged, httpx.Response(403)])
    respx.get(new).mock(side_effect=ranged)

    first = fetch_range(client, 0, 1000)
    second = fetch_range(client, 1000, 3000)

    assert first + second == BLOB[:3000]
    assert registry.call_count == 2


@respx.mock
def test_mirror_endpoint_with_path_prefix():
    credentials = CredentialStore.from_environment({}, env={"HOME": "/nonexistent"})
    endpoint = Endpoint.parse("https://mirror.example/cache")
    reference = Reference.parse(f"{HOST}/team/app:v1")
    route = respx.get(
        f"https://mirror.example/cache/v2/team/app/blobs/{BLOB_DIGEST}"
    ).mock(return_value=httpx.Response(200, content=BLOB))

    settings = TransportSettings(certs_dirs=())
    with RegistryClient(reference, settings, credentials, endpoint=endpoint) as mirror:
        assert fetch(mirror) == BLOB
    assert route.called


@respx.mock
def test_mirror_range_rejection_names_mirror_url():
    credentials = CredentialStore.from_environment({}, env={"HOME": "/nonexistent"})
    endpoint = Endpoint.parse("https://mirror.example/cache")
    reference = Reference.parse(f"{HOST}/team/app:v1")
    respx.get(f"https://mirror.example/cache/v2/team/app/blobs/{BLOB_DIGEST}").mock(
        return_value=httpx.Response(200, content=BLOB)
    )

    settings = TransportSettings(certs_dirs=())
    with (
        RegistryClient(reference, settings, credentials, endpoint=endpoint) as mirror,
        pytest.raises(RangesUnsupported) as raised,
    ):
        fetch_range(mirror, 0, 100)

    assert "https://mirror.example/cache responded 200" in str(raised.value)


def test_tls_context_loads_system_trust_at_first_handshake(tmp_path):
    context = TransportSettings(certs_dirs=()).ssl_context("registry.example")
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert context.cert_store_stats()["x509_ca"] == 0

    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=HOST)

    assert context.cert_store_stats()["x509_ca"] == system
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_context_of_skip_verify_host_checks_nothing():
    settings = TransportSettings(certs_dirs=(), skip_verify=frozenset({HOST}))

    context = settings.ssl_context(HOST)

    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    assert settings.ssl_context("other.example").verify_mode == ssl.CERT_REQUIRED


def test_tls_context_trusts_ca_files_given_for_host(tmp_path):
    ca = certs.create_ca(tmp_path)
    settings = TransportSettings(
        certs_dirs=(), extra_ca_files=((HOST, str(ca.cert_path)),)
    )

    assert settings.ssl_context(HOST).cert_store_stats()["x509_ca"] == 1
    assert settings.ssl_context("other.example").cert_store_stats()["x509_ca"] == 0


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> dict:
    """Run a TLS handshake in memory and return the certificate the server received."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    done = set()
    for _ in range(10):
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
        if len(done) == 2:
            return server_side.getpeercert()
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def mutual_tls(tmp_path):
    """A CA, a server context that requires a client certificate, and a client pair."""
    ca = certs.create_ca(tmp_path / "ca")
    server = certs.server_context(certs.issue_server_cert(ca, tmp_path, "server"))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=ca.cert_path)
    return ca, server, certs.issue_client_cert(ca, tmp_path, "client")


@pytest.mark.parametrize("form", ["pair", "one file"])
def test_tls_context_presents_client_cert(tmp_path, mutual_tls, form):
    ca, server, client = mutual_tls
    certificate, key = str(client.cert_path), str(client.key_path)
    if form == "one file":
        combined = tmp_path / "client.pem"
        combined.write_bytes(
            client.cert_path.read_bytes() + client.key_path.read_bytes()
        )
        certificate, key = str(combined), ""
    settings = TransportSettings(
        certs_dirs=(),
        extra_ca_files=((HOST, str(ca.cert_path)),),
        client_certs=((HOST, certificate, key), (HOST, "/absent.pem", "")),
    )

    presented = handshake(settings.ssl_context(HOST), server)

    assert presented["subject"] == ((("commonName", "client"),),)


def test_client_cert_only_for_its_host(mutual_tls):
    ca, server, client = mutual_tls
    settings = TransportSettings(
        certs_dirs=(),
        extra_ca_files=(("other.example", str(ca.cert_path)),),
        client_certs=((HOST, str(client.cert_path), str(client.key_path)),),
    )

    with pytest.raises(ssl.SSLError):
        handshake(settings.ssl_context("other.example"), server)


def test_tls_context_rejects_encrypted_client_key(tmp_path, mutual_tls):
    client = mutual_tls[2]
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        client.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    settings = TransportSettings(
        certs_dirs=(), client_certs=((HOST, str(client.cert_path), str(encrypted)),)
    )

    with pytest.raises(UsageError, match=f"key {encrypted} for {HOST} is encrypted"):
        settings.ssl_context(HOST)


@pytest.mark.parametrize("missing", ["key", "file"])
def test_tls_context_rejects_unloadable_client_cert(tmp_path, mutual_tls, missing):
    client = mutual_tls[2]
    certificate = str(client.cert_path) if missing == "key" else "/absent/client.pem"
    settings = TransportSettings(certs_dirs=(), client_certs=((HOST, certificate, ""),))

    with pytest.raises(UsageError, match=f"client certificate {certificate} for"):
        settings.ssl_context(HOST)


@pytest.mark.parametrize(
    "timeouts, connect",
    [((), 30.0), (((HOST, 0.5), (HOST, 9.0)), 0.5), (((HOST, 0.0),), None),
     ((("other.example", 0.5),), 30.0)],
)  # fmt: skip
def test_connect_timeout_per_host(tmp_path, timeouts, connect):
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(certs_dirs=(), connect_timeouts=timeouts)
    reference = Reference.parse(f"{HOST}/team/app:v1")

    with settings.client(HOST) as plain:
        assert plain.timeout.connect == connect
        assert plain.timeout.read == 60.0
    with RegistryClient(reference, settings, credentials, read_timeout=2.0) as client:
        assert client._http.timeout.connect == connect
        assert client._http.timeout.read == 2.0


@respx.mock
def test_configured_headers_go_with_every_request(tmp_path):
    route = respx.get(MANIFEST_URL).mock(return_value=manifest_answer())
    credentials = CredentialStore.from_environment({}, env={"HOME": str(tmp_path)})
    settings = TransportSettings(certs_dirs=())
    reference = Reference.parse(f"{HOST}/team/app:v1")

    with RegistryClient(
        reference, settings, credentials, headers={"X-Mirror-Token": "abc"}
    ) as client:
        client.get_manifest("v1", None)

    assert route.calls.last.request.headers["X-Mirror-Token"] == "abc"


@respx.mock
def test_https_read_error_stays_on_https(tmp_path):
    # A TLS port responds 400 to plain HTTP; a dropped https read must not
    # move the client there for good.
    respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=httpx.ReadError("connection reset by peer")
    )
    plain = respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=httpx.Response(400, text="Client sent an HTTP request")
    )

    with loopback_client(tmp_path, "127.0.0.1:5000") as client:
        with pytest.raises((httpx.ReadError, ApparateError)):
            client.get_manifest("v1", None)
        assert client.scheme is None

    assert plain.call_count == 0


@respx.mock
def test_plain_timeout_stays_on_http(tmp_path):
    respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    secure = respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=manifest_answer()
    )

    client = loopback_client(tmp_path, "127.0.0.1:5000", plain_first=True)
    with client, pytest.raises((httpx.ReadTimeout, ApparateError)):
        client.get_manifest("v1", None)

    assert secure.call_count == 0


@respx.mock
def test_stopped_range_fetch_sends_nothing(client):
    route = respx.get(BLOB_PATH).mock(return_value=httpx.Response(206))

    with pytest.raises(RangeFetchStopped):
        client.fetch_range(
            blob_descriptor(), 0, 10, lambda offset, data: None, "blob x",
            stopped=lambda: True,
        )  # fmt: skip

    assert route.call_count == 0


@respx.mock
def test_fetch_blob_wrong_declared_length_fails_at_once(client):
    page = b"<html>log in</html>"
    route = respx.get(BLOB_PATH).mock(return_value=httpx.Response(200, content=page))

    with pytest.raises(DigestMismatch) as caught:
        fetch(client)

    message = str(caught.value)
    assert f"sent {len(page)} bytes" in message
    assert f"of size {len(BLOB)}" in message
    assert str(BLOB_DIGEST) in message
    assert route.call_count == 1
    assert PAUSES == []


@respx.mock
def test_fetch_blob_descriptor_larger_than_body(client):
    route = respx.get(BLOB_PATH).mock(return_value=httpx.Response(200, content=BLOB))

    with pytest.raises(DigestMismatch, match=f"sent {len(BLOB)} bytes"):
        fetch(client, blob_descriptor(10**15))

    assert route.call_count == 1


@respx.mock
def test_fetch_blob_longer_body_names_size(client):
    body = BLOB + b"x" * 100_000
    respx.get(BLOB_PATH).mock(
        return_value=httpx.Response(200, stream=httpx.ByteStream(body))
    )

    with pytest.raises(DigestMismatch) as caught:
        fetch(client)

    message = str(caught.value)
    assert f"longer than its size of {len(BLOB)} bytes" in message
    assert "65536" not in message


def tls_failure(request: httpx.Request) -> httpx.Response:
    """Fail as httpx does when the server's certificate is not trusted."""
    cause = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    raise httpx.ConnectError(str(cause), request=request) from cause


def wrong_version(request: httpx.Request) -> httpx.Response:
    """Fail as httpx does when https reaches a plain-HTTP port."""
    cause = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    raise httpx.ConnectError(str(cause), request=request) from cause


def closed_on_handshake(request: httpx.Request) -> httpx.Response:
    """Fail as httpx does when a plain-HTTP port closes a TLS handshake."""
    cause = ssl.SSLEOFError(
        8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol"
    )
    raise httpx.ConnectError(str(cause), request=request) from cause


@pytest.mark.parametrize(
    "plain_first", [True, False], ids=["plain first", "https first"]
)
@respx.mock
def test_untrusted_certificate_beats_plain_400(tmp_path, plain_first):
    # A TLS port responds 400 to plain HTTP, so the https failure is the
    # one to report.
    respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=httpx.Response(
            400, text="Client sent an HTTP request to an HTTPS server."
        )
    )
    respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=tls_failure
    )

    client = loopback_client(tmp_path, "127.0.0.1:5000", plain_first=plain_first)
    with client, pytest.raises(RegistryUnreachable) as caught:
        client.get_manifest("v1", None)

    message = str(caught.value)
    assert "TLS with 127.0.0.1:5000 failed" in message
    assert "certs.d/127.0.0.1:5000/ca.crt" in message
    assert "HTTP 400" not in message
    assert caught.value.exit_code == 6


@pytest.mark.parametrize(
    "https_failure", [wrong_version, closed_on_handshake], ids=["version", "eof"]
)
@respx.mock
def test_plain_400_kept_when_https_port_is_plain(tmp_path, https_failure):
    plain = respx.get("http://127.0.0.1:5000/v2/app/manifests/v1").mock(
        return_value=httpx.Response(
            400, json={"errors": [{"code": "NAME_INVALID", "message": "bad name"}]}
        )
    )
    respx.get("https://127.0.0.1:5000/v2/app/manifests/v1").mock(
        side_effect=https_failure
    )

    client = loopback_client(tmp_path, "127.0.0.1:5000", plain_first=True)
    with client, pytest.raises(InvalidResponse, match="bad name"):
        client.get_manifest("v1", None)

    assert plain.call_count == 2


def redirecting_handler(target: str | None) -> type:
    """Build a handler that redirects every GET to ``target``, or to itself."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", target or self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def redirecting_server(request):
    """A server on 127.0.0.1 that redirects to ``request.param`` (None: a loop)."""
    handler = redirecting_handler(request.param)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


REDIRECT_FAILURES = {
    "loop": (None, "too many redirects"),
    "file URL": ("file:///etc/passwd", "unsupported file: URL"),
}


@pytest.mark.parametrize(
    "redirecting_server, expected",
    REDIRECT_FAILURES.values(),
    ids=REDIRECT_FAILURES,
    indirect=["redirecting_server"],
)
def test_manifest_redirect_failure_is_invalid_response(
    tmp_path, redirecting_server, expected
):
    client = loopback_client(tmp_path, redirecting_server, plain_first=True)
    with client, pytest.raises(InvalidResponse) as caught:
        client.get_manifest("v1", None)

    message = str(caught.value)
    assert expected in message
    assert f"{redirecting_server}/app:v1" in message
    assert "TLS" not in message
    assert caught.value.exit_code == 8


@pytest.mark.parametrize(
    "redirecting_server, expected",
    REDIRECT_FAILURES.values(),
    ids=REDIRECT_FAILURES,
    indirect=["redirecting_server"],
)
def test_blob_redirect_failure_is_invalid_response(
    tmp_path, redirecting_server, expected
):
    client = loopback_client(tmp_path, redirecting_server, plain_first=True)
    with client, pytest.raises(InvalidResponse) as caught:
        client.fetch_blob(blob_descriptor(), lambda data: None, "blob x")

    assert expected in str(caught.value)
    assert "blob x" in str(caught.value)


class PlainClosingOnTls(RawServer):
    """A plain-HTTP server on 127.0.0.1 that responds with 400 NAME_INVALID and
    closes a connection that opens with a TLS handshake, sending nothing."""

    def respond(self, connection: socket.socket) -> None:
        first = connection.recv(1, socket.MSG_PEEK)
        connection.recv(65536)
        if first == b"\x16":  # a TLS record: the handshake
            connection.shutdown(socket.SHUT_RDWR)
            return
        body = b'{"errors": [{"code": "NAME_INVALID", "message": "bad name"}]}'
        connection.sendall(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )


@pytest.mark.parametrize(
    "plain_first", [True, False], ids=["plain first", "https first"]
)
def test_plain_400_kept_when_port_closes_tls(tmp_path, plain_first):
    server = PlainClosingOnTls()
    try:
        client = loopback_client(
            tmp_path, f"127.0.0.1:{server.port}", plain_first=plain_first
        )
        with client, pytest.raises(InvalidResponse, match="bad name"):
            client.get_manifest("v1", None)
    finally:
        server.close()


def send_slowly(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    """Send ``body`` one byte every 20 ms, until the client hangs up."""
    for byte in body:
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.02)


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a loopback port; yield its host:port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class TricklingManifest(http.server.BaseHTTPRequestHandler):
    """Sends a manifest's headers, then its body one byte every 20 ms."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.send_header("Content-Length", str(len(MANIFEST)))
        self.end_headers()
        send_slowly(self, MANIFEST)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_trickling_manifest_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr("apparate.registry.client.MANIFEST_READ_SECONDS", 0.3)

    with serving(TricklingManifest) as host:
        client = loopback_client(tmp_path, host, plain_first=True)
        with client, pytest.raises(RegistryUnreachable, match="timed out after 0.3 s"):
            client.get_manifest("v1", None)


class TenSecondClock:
    """A clock that moves 10 s each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 10.0
        return self.now


class Pieces(httpx.SyncByteStream):
    """A body sent as 10-byte pieces."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self):
        for start in range(0, len(self.data), 10):
            yield self.data[start : start + 10]


@respx.mock
def test_trickling_blob_counts_as_stalled(client, monkeypatch):
    # Each attempt hands on a few pieces before the clock shows it too slow:
    # progress, but no reason to wait for the rest of a 512 kB blob.
    clock = TenSecondClock()
    monkeypatch.setattr(
        "apparate.registry.client.paced",
        lambda pieces: pace.paced(pieces, clock=clock),
    )

    def trickle(request: httpx.Request) -> httpx.Response:
        start = range_start(request)
        if not start:
            return httpx.Response(200, stream=Pieces(BLOB))
        headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
        return httpx.Response(206, headers=headers, stream=Pieces(BLOB[start:]))

    route = respx.get(BLOB_PATH).mock(side_effect=trickle)

    with pytest.raises(TransferTimedOut, match="timed out 2 times.*least speed"):
        fetch(client)

    assert route.call_count == 2
    assert PAUSES == [0.5]


class TricklingBlob(http.server.BaseHTTPRequestHandler):
    """A server that sends a range's headers, then one byte every 20 ms."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        first, last = self.headers["Range"].removeprefix("bytes=").split("-")
        start, end = int(first), int(last) + 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(BLOB)}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        send_slowly(self, BLOB[start:end])

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_trickling_range_moves_on(tmp_path, monkeypatch):
    monkeypatch.setattr("apparate.registry.pace.WINDOW_SECONDS", 0.3)

    with serving(TricklingBlob) as host:
        client = loopback_client(tmp_path, host, plain_first=True)
        with client, pytest.raises(TruncatedBody, match="least speed"):
            client.fetch_range(
                blob_descriptor(), 0, 4096, lambda offset, data: None, "blob x",
                failover=True,
            )  # fmt: skip


@respx.mock
def test_busy_registry_after_some_bytes_is_retried(client):
    answers = iter(
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:100_000])),
            httpx.Response(503),
        ]
    )
    respx.get(BLOB_PATH).mock(
        side_effect=lambda request: next(answers, None) or partial(request)
    )

    assert fetch(client) == BLOB
    assert PAUSES == [0.5]


@respx.mock
def test_busy_registry_at_first_request_fails(client):
    route = respx.get(BLOB_PATH).mock(return_value=httpx.Response(503))

    with pytest.raises(ServerError):
        fetch(client)

    assert route.call_count == 1


def dropped_first_range(request: httpx.Request) -> httpx.Response | None:
    """Answer the first request for bytes 100-4999 with 500 bytes, then a drop."""
    if range_start(request) != 100:
        return None
    headers = {"Content-Range": f"bytes 100-4999/{len(BLOB)}"}
    return httpx.Response(206, headers=headers, stream=BrokenStream(BLOB[100:600]))


@respx.mock
def test_busy_registry_range_is_retried(client):
    def drop_then_busy(request: httpx.Request) -> httpx.Response:
        return dropped_first_range(request) or next(answers, None) or ranged(request)

    answers = iter([httpx.Response(503), httpx.Response(502)])
    respx.get(BLOB_PATH).mock(side_effect=drop_then_busy)

    assert fetch_range(client, 100, 5000) == BLOB[100:5000]
    assert PAUSES == [0.5, 1.0]


@respx.mock
def test_busy_registry_at_range_start_fails(client):
    route = respx.get(BLOB_PATH).mock(return_value=httpx.Response(503))

    with pytest.raises(ServerError):
        fetch_range(client, 100, 5000)

    assert route.call_count == 1


@respx.mock
def test_rate_limit_after_some_bytes_is_not_retried(client):
    answers = iter(
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:100_000])),
            httpx.Response(429, headers={"Retry-After": "30"}),
        ]
    )
    route = respx.get(BLOB_PATH).mock(side_effect=lambda request: next(answers))

    with pytest.raises(RateLimited):
        fetch(client)

    assert route.call_count == 2


@respx.mock
def test_range_from_failing_registry_gives_up(client):
    def drop_then_fail(request: httpx.Request) -> httpx.Response:
        return dropped_first_range(request) or httpx.Response(502)

    route = respx.get(BLOB_PATH).mock(side_effect=drop_then_fail)

    with pytest.raises(ServerError, match="502"):
        fetch_range(client, 100, 5000)

    assert route.call_count == 6


@respx.mock
def test_stopped_blob_download_makes_no_new_attempt(client):
    route = respx.get(BLOB_PATH).mock(side_effect=httpx.ReadTimeout("no data"))
    attempts = iter([False, True])

    with pytest.raises(RangeFetchStopped):
        client.fetch_blob(
            blob_descriptor(), lambda data: None, "blob x",
            stopped=lambda: next(attempts),
        )  # fmt: skip

    assert route.call_count == 1


@pytest.mark.parametrize(("requested", "waited"), [("5", 5.0), ("3600", 30.0)])
@respx.mock
def test_busy_registry_retry_after_is_honoured(client, requested, waited):
    answers = iter(
        [
            httpx.Response(200, stream=BrokenStream(BLOB[:100_000])),
            httpx.Response(503, headers={"Retry-After": requested}),
        ]
    )
    respx.get(BLOB_PATH).mock(
        side_effect=lambda request: next(answers, None) or partial(request)
    )

    assert fetch(client) == BLOB
    assert PAUSES == [waited]


@pytest.mark.parametrize(
    ("image", "endpoint", "plain_first"),
    [
        ("127.0.0.1:5000/app:v1", None, True),
        ("localhost:5000/app:v1", None, True),
        ("registry.example/app:v1", None, False),
        ("127.0.0.1:5000/app:v1", "https://127.0.0.1:5000", False),
    ],
)
def test_loopback_registry_asked_on_plain_http_first(image, endpoint, plain_first):
    credentials = CredentialStore.from_environment({}, env={"HOME": "/nonexistent"})
    settings = TransportSettings(certs_dirs=())
    parsed = Endpoint.parse(endpoint) if endpoint else None

    with RegistryClient(
        Reference.parse(image), settings, credentials, endpoint=parsed
    ) as client:
        assert client.plain_http_first is plain_first


@respx.mock
def test_range_dropped_after_every_byte_gives_up(client):
    # Each attempt makes progress, so only a cap on attempts ends the range:
    # a server that drops every connection after one byte held the pull for
    # as many attempts as the range has bytes.
    def one_byte(request: httpx.Request) -> httpx.Response:
        if route.call_count > MAX_ATTEMPTS + 5:
            raise AssertionError("the client never gave up")
        start = range_start(request)
        headers = {"Content-Range": f"bytes {start}-4999/{len(BLOB)}"}
        return httpx.Response(
            206, headers=headers, stream=BrokenStream(BLOB[start : start + 1])
        )

    route = respx.get(BLOB_PATH).mock(side_effect=one_byte)

    with pytest.raises(TruncatedBody, match=f"failed {MAX_ATTEMPTS} times"):
        fetch_range(client, 100, 5000)

    assert route.call_count == MAX_ATTEMPTS
