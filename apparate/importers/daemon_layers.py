"""Find the layers of an image that a daemon already has, so they are not sent.

docker: a layer's chain ID is derived from its diff_id and the diff_ids of
every layer below it, and docker has the chain of each layer of each of
its images. So when the first diff_ids of the image being imported equal
those of an image docker has, those layers need not be sent again:
``docker load`` reads no layer file whose chain it already has.

containerd: ``ctr images import`` of an OCI archive takes the blobs it
contains and reads the others from containerd's content store. Layer blobs
that the store's other images also have are looked up there.

The daemon's images are compared with the store's, whose manifests and
configs are at hand, so a layer the daemon got from elsewhere is sent all
the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from apparate.digest import Digest
from apparate.errors import ApparateError
from apparate.importers.image import StoredContent
from apparate.manifest import Manifest, parse_diff_ids, parse_json, parse_manifest
from apparate.store.layout import Store, StoredImage

log = logging.getLogger(__name__)


def left_out_note(daemon: str, left_out: int, layers: int) -> str:
    """Return the import summary's words for layers not sent, or "" for none."""
    if not left_out:
        return ""
    return (
        f"{daemon} already had {left_out} of its {layers} layers, which were not sent"
    )


def shared_bottom(ours: Sequence[Digest], theirs: Sequence[Digest]) -> int:
    """Return how many diff_ids, from the bottom layer up, two images share."""
    count = 0
    for mine, other in zip(ours, theirs):
        if mine != other:
            break
        count += 1
    return count


def bottom_layers_in_docker(
    store: Store, content: StoredContent, has_image: Callable[[str], bool]
) -> int:
    """Return how many bottom layers of ``content`` docker already has.

    ``has_image`` returns whether docker has an image ID (config digest). It
    is asked only about stored images that share bottom layers with
    ``content``, most shared first.
    """
    sharing: dict[str, int] = {}
    for image, manifest in _other_manifests(store, content):
        image_id = str(manifest.config.digest)
        if image_id == str(content.config_digest):
            continue
        subject = f"config of {image.reference}"
        try:
            config_body = store.read_intact_blob(manifest.config.digest, remove=False)
            if config_body is None:
                continue
            diff_ids = parse_diff_ids(parse_json(config_body, subject), subject)
        except ApparateError as error:
            log.debug("%s: not compared with docker's images: %s", image, error)
            continue
        shared = shared_bottom(content.diff_ids, diff_ids)
        if shared:
            sharing[image_id] = max(shared, sharing.get(image_id, 0))
    for image_id, shared in sorted(sharing.items(), key=lambda item: -item[1]):
        if has_image(image_id):
            return shared
    return 0


def shared_layer_blobs(store: Store, content: StoredContent) -> set[Digest]:
    """Return the layer blobs of ``content`` that other stored images have too."""
    ours = {layer.digest for layer in content.parsed.layers}
    shared: set[Digest] = set()
    for _, manifest in _other_manifests(store, content):
        shared.update(ours & {layer.digest for layer in manifest.layers})
    return shared


def _other_manifests(
    store: Store, content: StoredContent
) -> Iterator[tuple[StoredImage, Manifest]]:
    """Yield the other stored images with their manifests; pass over unreadable ones.

    A damaged blob is kept, because the import did not request its image.
    """
    for image in store.images():
        if image.source_manifest == content.manifest.digest:
            continue
        subject = f"manifest of {image.reference}"
        try:
            body = store.read_intact_blob(image.source_manifest, remove=False)
            if body is None:
                continue
            yield image, parse_manifest(parse_json(body, subject), subject)
        except ApparateError as error:
            log.debug("%s: not compared with the daemon's images: %s", image, error)
