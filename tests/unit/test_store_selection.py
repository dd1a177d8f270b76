"""Which stored images a reference given to ``apparate rm`` names."""

from __future__ import annotations

import pytest

from apparate.digest import Digest
from apparate.errors import InvalidReference
from apparate.manifest import OCI_MANIFEST, Descriptor
from apparate.store.layout import StoredImage
from apparate.store.selection import select_images

M1, M2, SOURCE = Digest.of(b"m1"), Digest.of(b"m2"), Digest.of(b"docker manifest")
AMD64, INDEX = Digest.of(b"amd64 manifest"), Digest.of(b"index")


def image(
    reference: str,
    manifest: Digest,
    source: Digest | None = None,
    index: Digest | None = None,
) -> StoredImage:
    descriptor = Descriptor(OCI_MANIFEST, manifest, 100)
    return StoredImage(reference, descriptor, source or manifest, index)


STORED = [
    image("docker.io/library/debian:bookworm", M1),
    image("127.0.0.1:5000/samples/base:v1", M1),
    image(f"127.0.0.1:5000/samples/base@{M2}", M2),
    image(f"127.0.0.1:5000/samples/base:v2@{M2}", M2),
    image("127.0.0.1:5000/samples/docker:v1", M1, SOURCE),
    image("127.0.0.1:5000/samples/multi:v1", AMD64, index=INDEX),
    image("latest", M1),
]

CASES = {
    "exact": ("127.0.0.1:5000/samples/base:v1", ["127.0.0.1:5000/samples/base:v1"]),
    "normalised": ("debian:bookworm", ["docker.io/library/debian:bookworm"]),
    "other tag": ("127.0.0.1:5000/samples/base:v3", []),
    "other registry": ("127.0.0.2:5000/samples/base:v1", []),
    "a tag does not name an image pulled by digest": (
        "127.0.0.1:5000/samples/base:v2",
        [],
    ),
    "exact by digest": (
        f"127.0.0.1:5000/samples/base@{M2}",
        [f"127.0.0.1:5000/samples/base@{M2}"],
    ),
    "digest names every entry with it": (
        f"127.0.0.1:5000/samples/base:v9@{M2}",
        [f"127.0.0.1:5000/samples/base@{M2}", f"127.0.0.1:5000/samples/base:v2@{M2}"],
    ),
    "digest of an image pulled by tag": (
        f"127.0.0.1:5000/samples/base@{M1}",
        ["127.0.0.1:5000/samples/base:v1"],
    ),
    "registry digest of a converted copy": (
        f"127.0.0.1:5000/samples/docker@{SOURCE}",
        ["127.0.0.1:5000/samples/docker:v1"],
    ),
    "index digest of an image picked from it": (
        f"127.0.0.1:5000/samples/multi@{INDEX}",
        ["127.0.0.1:5000/samples/multi:v1"],
    ),
    "manifest digest of an image picked from an index": (
        f"127.0.0.1:5000/samples/multi@{AMD64}",
        ["127.0.0.1:5000/samples/multi:v1"],
    ),
    "index digest in another repository": (
        f"127.0.0.1:5000/samples/base@{INDEX}",
        [],
    ),
    "a name another tool wrote": ("latest", ["latest"]),
}


@pytest.mark.parametrize("text, expected", CASES.values(), ids=CASES)
def test_select_images(text, expected):
    assert select_images(text, STORED) == expected


def test_malformed_reference_is_a_usage_error():
    with pytest.raises(InvalidReference):
        select_images("Not A Reference", STORED)
