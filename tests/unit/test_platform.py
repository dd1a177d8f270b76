import pytest

from apparate.digest import Digest
from apparate.errors import InvalidResponse, PlatformNotFound
from apparate.manifest import OCI_MANIFEST, Descriptor, Index, parse_index
from apparate.platform import Platform, match_rank
from apparate.resolve import select_manifest


@pytest.mark.parametrize(
    "text, expected",
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_platform_parse_normalises(text, expected):
    assert Platform.parse(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v2", Platform("linux", "amd64", "v2")),
        ("linux/arm64/8", Platform("linux", "arm64")),
        ("linux/arm64/v8.0", Platform("linux", "arm64")),
        ("linux/arm64/9", Platform("linux", "arm64", "v9")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/5", Platform("linux", "arm", "v5")),
        ("linux/arm/6", Platform("linux", "arm", "v6")),
        ("linux/arm/8", Platform("linux", "arm", "v8")),
        ("linux/armel", Platform("linux", "arm", "v6")),
    ],
)
def test_platform_parse_normalises_variants(text, expected):
    assert Platform.parse(text) == expected


def test_platform_normalised_lowercases_index_fields():
    platform = Platform.normalised("Linux", "ARM64", "V8")

    assert platform == Platform("linux", "arm64")


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_platform_parse_rejects(text):
    with pytest.raises(ValueError, match="expected OS/ARCH"):
        Platform.parse(text)


@pytest.mark.parametrize(
    "wanted, offered, rank",
    [
        ("linux/amd64", "linux/amd64", 0),
        ("linux/amd64", "linux/arm64", None),
        ("linux/amd64", "windows/amd64", None),
        ("linux/arm64", "linux/arm64/v8", 0),
        ("linux/arm64/v8", "linux/arm64", 0),
        ("linux/arm/v7", "linux/arm/v7", 0),
        ("linux/arm/v7", "linux/arm/v6", 1),
        ("linux/arm/v7", "linux/arm/v5", 2),
        ("linux/arm/v6", "linux/arm/v7", None),
    ],
)
def test_match_rank(wanted, offered, rank):
    assert match_rank(Platform.parse(wanted), Platform.parse(offered)) == rank


def entry(platform: str | None, number: int, **annotations: str) -> Descriptor:
    return Descriptor(
        media_type=OCI_MANIFEST,
        digest=Digest("sha256", f"{number:064x}"),
        size=100,
        platform=Platform.parse(platform) if platform else None,
        annotations=annotations,
    )


ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest"}
INDEX = Index(
    "application/vnd.oci.image.index.v1+json",
    [
        entry("linux/amd64", 1),
        entry("unknown/unknown", 2, **ATTESTATION),
        entry("linux/arm/v6", 3),
        entry("linux/arm64", 4),
        entry("linux/arm/v7", 5),
        entry("linux/amd64", 6),
    ],
)


@pytest.mark.parametrize(
    "wanted, expected",
    [
        ("linux/amd64", 1),
        ("linux/arm64/v8", 4),
        ("linux/arm/v7", 5),
        ("linux/arm/v6", 3),
    ],
)
def test_select_manifest_picks_best(wanted, expected):
    chosen = select_manifest(INDEX, Platform.parse(wanted), "img")

    assert chosen.digest == Digest("sha256", f"{expected:064x}")


@pytest.mark.parametrize(
    "wanted, offered",
    [
        ("linux/amd64", {"os": "linux", "architecture": "amd64", "variant": "v1"}),
        ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8.0"}),
        ("linux/arm/v7", {"os": "linux", "architecture": "arm", "variant": "7"}),
        ("linux/arm/v7", {"os": "linux", "architecture": "arm"}),
        ("linux/arm/v6", {"os": "linux", "architecture": "arm", "variant": "6"}),
    ],
)
def test_select_manifest_matches_variant_spellings(wanted, offered):
    digest = Digest("sha256", f"{11:064x}")
    document = {
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": f"sha256:{12:064x}", "size": 100,
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": OCI_MANIFEST, "digest": str(digest), "size": 100,
             "platform": offered},
        ]
    }  # fmt: skip
    index = parse_index(document, "index")

    chosen = select_manifest(index, Platform.parse(wanted), "img")

    assert chosen.digest == digest


def test_select_manifest_falls_back_to_older_arm():
    index = Index(INDEX.media_type, [entry("linux/arm/v6", 7), entry("linux/amd64", 8)])

    chosen = select_manifest(index, Platform.parse("linux/arm/v7"), "img")

    assert chosen.digest == Digest("sha256", f"{7:064x}")


def test_select_manifest_lists_platforms_when_none_match():
    with pytest.raises(PlatformNotFound) as caught:
        select_manifest(INDEX, Platform.parse("linux/s390x"), "example.com/app:v1")

    message = str(caught.value)
    assert "example.com/app:v1 has no image for linux/s390x" in message
    assert "linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64" in message
    assert "unknown" not in message


def test_select_manifest_skips_attestations():
    index = Index(INDEX.media_type, [entry("unknown/unknown", 2, **ATTESTATION)])

    with pytest.raises(PlatformNotFound, match="offers: none"):
        select_manifest(index, Platform.parse("linux/amd64"), "img")


@pytest.mark.parametrize(
    "wanted, offered, rank",
    [
        ("linux/amd64/v3", "linux/amd64/v3", 0),
        ("linux/amd64/v3", "linux/amd64/v2", 1),
        ("linux/amd64/v3", "linux/amd64", 2),
        ("linux/amd64/v2", "linux/amd64/v3", None),
        ("linux/amd64", "linux/amd64/v2", None),
    ],
)
def test_match_rank_amd64_levels(wanted, offered, rank):
    assert match_rank(Platform.parse(wanted), Platform.parse(offered)) == rank


def test_select_manifest_takes_unlabelled_entry_last():
    index = Index(INDEX.media_type, [entry(None, 9), entry("linux/arm64", 4)])

    assert select_manifest(index, Platform.parse("linux/arm64"), "img").digest == (
        Digest("sha256", f"{4:064x}")
    )
    assert select_manifest(index, Platform.parse("linux/amd64"), "img").digest == (
        Digest("sha256", f"{9:064x}")
    )


def nested_index(platform: str | None, number: int) -> Descriptor:
    nested = entry(platform, number)
    return Descriptor(INDEX.media_type, nested.digest, nested.size, nested.platform)


@pytest.mark.parametrize("platform", ["linux/amd64", None])
def test_select_manifest_rejects_nested_index(platform):
    index = Index(INDEX.media_type, [nested_index(platform, 10)])

    with pytest.raises(InvalidResponse) as caught:
        select_manifest(index, Platform.parse("linux/amd64"), "example.com/app:v1")

    message = str(caught.value)
    assert "example.com/app:v1" in message
    assert "nested indexes are not supported" in message
    assert str(Digest("sha256", f"{10:064x}")) in message


def test_select_manifest_prefers_image_to_nested_index():
    index = Index(INDEX.media_type, [nested_index(None, 10), entry("linux/amd64", 1)])

    chosen = select_manifest(index, Platform.parse("linux/amd64"), "img")

    assert chosen.digest == Digest("sha256", f"{1:064x}")


def test_select_manifest_nested_index_of_other_platform():
    index = Index(INDEX.media_type, [nested_index("linux/arm64", 10)])

    with pytest.raises(PlatformNotFound, match="has no image for linux/amd64"):
        select_manifest(index, Platform.parse("linux/amd64"), "img")
