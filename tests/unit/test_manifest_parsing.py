"""Malformed manifests, indexes and configs, each rejected with one clear line."""

import pytest

from apparate.digest import Digest
from apparate.errors import InvalidResponse
from apparate.manifest import (
    OCI_INDEX,
    OCI_MANIFEST,
    parse_diff_ids,
    parse_index,
    parse_manifest,
)

IMAGE = "registry.example/team/app:v1"
DIGEST = "sha256:" + "a" * 64
CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json",
          "digest": DIGEST, "size": 10}  # fmt: skip
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
         "digest": DIGEST, "size": 20}  # fmt: skip
# Words of Python's own exceptions, which must not reach the user.
LEAKED = ("subscriptable", "KeyError", "TypeError", "object has no", "'config'")


def manifest(**fields: object) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
            "layers": [LAYER], **fields}  # fmt: skip


MALFORMED_MANIFESTS = {
    "layers not a list": (manifest(layers=1), "has no list of layers"),
    "no layers": (
        {"schemaVersion": 2, "config": CONFIG},
        "has no list of layers",
    ),
    "no config": (
        {"schemaVersion": 2, "layers": [LAYER]},
        "has no config descriptor",
    ),
    "config not an object": (manifest(config="x"), "has no config descriptor"),
    "config without digest": (
        manifest(config={"size": 1}),
        "config descriptor of manifest of registry.example/team/app:v1 has no digest",
    ),
    "config with invalid digest": (
        manifest(config={**CONFIG, "digest": "sha256:xyz"}),
        "invalid sha256 digest 'sha256:xyz'",
    ),
    "config without size": (
        manifest(config={"digest": DIGEST}),
        "config descriptor of manifest of registry.example/team/app:v1 has no size",
    ),
    "negative size": (
        manifest(config={**CONFIG, "size": -1}),
        "has an invalid size -1",
    ),
    "size as text": (
        manifest(config={**CONFIG, "size": "10"}),
        "has an invalid size '10'",
    ),
    "size as boolean": (
        manifest(config={**CONFIG, "size": True}),
        "has an invalid size True",
    ),
    "layer not an object": (
        manifest(layers=[LAYER, 5]),
        "layer 2 of manifest of registry.example/team/app:v1 is not a JSON object",
    ),
    "layer media type not text": (
        manifest(layers=[{**LAYER, "mediaType": 7}]),
        (
            "layer 1 of manifest of registry.example/team/app:v1 has an invalid "
            "media type 7"
        ),
    ),
    "annotations not an object": (
        manifest(layers=[{**LAYER, "annotations": ["a"]}]),
        "has invalid annotations",
    ),
    "annotation value not text": (
        manifest(layers=[{**LAYER, "annotations": {"a": 1}}]),
        "has invalid annotations",
    ),
    "schema 1": (
        {
            "schemaVersion": 1,
            "name": "team/app",
            "tag": "v1",
            "fsLayers": [{"blobSum": DIGEST}],
            "history": [],
        },
        "schema 1 manifests are not supported",
    ),
}


@pytest.mark.parametrize(
    "document, expected", MALFORMED_MANIFESTS.values(), ids=MALFORMED_MANIFESTS
)
def test_parse_manifest_rejects(document, expected):
    with pytest.raises(InvalidResponse) as caught:
        parse_manifest(document, f"manifest of {IMAGE}")

    message = str(caught.value)
    assert expected in message
    assert IMAGE in message
    for word in LEAKED:
        assert word not in message


def test_parse_manifest_reads_descriptors():
    layer = {**LAYER, "annotations": {"org.example": "yes"}}

    parsed = parse_manifest(manifest(layers=[layer]), f"manifest of {IMAGE}")

    assert parsed.media_type == OCI_MANIFEST
    assert parsed.config.digest == Digest.parse(DIGEST)
    assert parsed.config.size == 10
    assert [item.size for item in parsed.layers] == [20]
    assert parsed.layers[0].annotations == {"org.example": "yes"}


MALFORMED_INDEXES = {
    "manifests not a list": ({"manifests": 1}, "has no list of manifests"),
    "entry not an object": (
        {"manifests": ["x"]},
        "entry 1 of index of registry.example/team/app:v1 is not a JSON object",
    ),
    "entry without size": (
        {"manifests": [{"mediaType": OCI_MANIFEST, "digest": DIGEST}]},
        "entry 1 of index of registry.example/team/app:v1 has no size",
    ),
}


@pytest.mark.parametrize(
    "document, expected", MALFORMED_INDEXES.values(), ids=MALFORMED_INDEXES
)
def test_parse_index_rejects(document, expected):
    with pytest.raises(InvalidResponse) as caught:
        parse_index({"mediaType": OCI_INDEX, **document}, f"index of {IMAGE}")

    message = str(caught.value)
    assert expected in message
    for word in LEAKED:
        assert word not in message


MALFORMED_CONFIGS = {
    "no rootfs": ({"architecture": "amd64"}, "has no rootfs.diff_ids"),
    "rootfs not an object": ({"rootfs": 1}, "has no rootfs.diff_ids"),
    "diff_ids not a list": (
        {"rootfs": {"type": "layers", "diff_ids": DIGEST}},
        "has no rootfs.diff_ids",
    ),
    "diff_id not text": (
        {"rootfs": {"diff_ids": [5]}},
        "has an invalid diff_id 5",
    ),
    "diff_id invalid": (
        {"rootfs": {"diff_ids": ["sha256:nope"]}},
        "has an invalid diff_id (invalid sha256 digest 'sha256:nope'",
    ),
}


@pytest.mark.parametrize(
    "document, expected", MALFORMED_CONFIGS.values(), ids=MALFORMED_CONFIGS
)
def test_parse_diff_ids_rejects(document, expected):
    with pytest.raises(InvalidResponse) as caught:
        parse_diff_ids(document, f"config of {IMAGE}")

    message = str(caught.value)
    assert f"config of {IMAGE} {expected}" in message
    for word in LEAKED:
        assert word not in message
