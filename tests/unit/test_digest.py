"""Digest parsing: what counts as a digest, and what does not."""

import pytest

from apparate.digest import Digest

SHA256 = "sha256:" + "a" * 64


def test_parse_or_none_reads_a_digest():
    assert Digest.parse_or_none(SHA256) == Digest("sha256", "a" * 64)


@pytest.mark.parametrize(
    "value",
    [None, 7, b"sha256:aa", "", "sha256:" + "A" * 64, "md5:" + "a" * 32, ["x"]],
    ids=["none", "int", "bytes", "empty", "uppercase", "md5", "list"],
)
def test_parse_or_none_rejects(value):
    assert Digest.parse_or_none(value) is None
