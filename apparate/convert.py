"""``apparate convert``: rewrite an image's layers as chunked layers and push it.

Every platform of the source is pulled into the local store and verified,
each layer is converted (layers already converted are kept byte for byte),
and the destination receives only the blobs it lacks, then the manifests.
Frames of earlier converted images are reused for unchanged chunks, so a new
version shares frames with the old one even after a zstd upgrade.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apparate.chunked.format import (
    MAX_TABLE_BYTES,
    ChunkTable,
    is_chunked_layer,
    table_annotations,
)
from apparate.chunked.reader import read_stored_table
from apparate.chunked.reuse import StoredFrames
from apparate.chunked.writer import (
    DEFAULT_LEVEL,
    ConvertedLayer,
    Encoder,
    write_chunked_layer,
)
from apparate.chunker import Chunker, MalformedTar, default_chunker, fallback_chunker
from apparate.config import load_config
from apparate.delta.assembler import record_layer
from apparate.digest import Digest
from apparate.errors import (
    ApparateError,
    ChunkedLayerError,
    DiffIDMismatch,
    NotFound,
    UsageError,
)
from apparate.image import fetch_manifest
from apparate.layers import open_tar_stream
from apparate.manifest import (
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    media_type_of,
    parse_diff_ids,
    parse_index,
    parse_json,
    parse_manifest,
)
from apparate.pulling import PullOptions, pull
from apparate.reference import Reference
from apparate.registry.client import RegistryClient
from apparate.registry.credentials import Credentials, CredentialStore
from apparate.registry.push import RegistryWriter
from apparate.registry.transport import TransportSettings
from apparate.resolve import image_entries
from apparate.store.chunk_index import INDEX_FILE, LAYER, ChunkIndex
from apparate.store.collector import fit_to_limit
from apparate.store.layout import Store, default_store_path

log = logging.getLogger(__name__)

OCI_ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


@dataclass
class ConvertOptions:
    """Settings of a conversion that the CLI builds from flags."""

    store: Path | None = None
    level: int = DEFAULT_LEVEL
    reuse_from: list[str] | None = None
    insecure_registries: tuple[str, ...] = ()
    credentials: dict[str, Credentials] = field(default_factory=dict)
    workers: int = 2
    on_layer: Callable[[LayerConversion], None] | None = None


@dataclass(frozen=True)
class LayerConversion:
    """One layer: the source blob, the chunked blob, and what reuse saved."""

    source: Digest
    converted: Digest
    source_size: int
    converted_size: int
    chunks: int
    frames_reused: int
    kept: bool


@dataclass(frozen=True)
class ConvertResult:
    """Summary of a conversion, as ``--json`` prints it."""

    source: str
    destination: str
    digest: Digest
    layers: list[LayerConversion]
    bytes_pushed: int
    blobs_mounted: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": str(self.digest),
            "bytes_pushed": self.bytes_pushed,
            "blobs_mounted": self.blobs_mounted,
            "seconds": round(self.seconds, 3),
            "layers": [
                {
                    "source": str(layer.source),
                    "converted": str(layer.converted),
                    "source_size": layer.source_size,
                    "converted_size": layer.converted_size,
                    "chunks": layer.chunks,
                    "frames_reused": layer.frames_reused,
                    "kept": layer.kept,
                }
                for layer in self.layers
            ],
        }


@dataclass(frozen=True)
class _SourceImage:
    """One platform's manifest of the source, pulled into the store."""

    manifest: Descriptor
    body: bytes
    parsed: Manifest
    diff_ids: list[Digest]
    platform: dict[str, Any] | None


@dataclass
class _ConvertedImage:
    """One platform's converted manifest and the blobs it names (config first)."""

    manifest: Descriptor
    body: bytes
    blobs: list[Descriptor]
    layers: list[LayerConversion]
    platform: dict[str, Any] | None

    @property
    def source_blobs(self) -> frozenset[Digest]:
        """The blobs the source repository contains too: the config, kept layers."""
        kept = [layer.source for layer in self.layers if layer.kept]
        return frozenset([self.blobs[0].digest, *kept])


class _Session:
    """The store, chunk index and registry settings one conversion shares."""

    def __init__(self, options: ConvertOptions) -> None:
        self.options = options
        self.config = load_config()
        self.settings = TransportSettings.from_environment(options.insecure_registries)
        self.credentials = CredentialStore.from_environment(options.credentials)
        # Opened last, so that invalid settings leave nothing open.
        self.store = Store(options.store or default_store_path())
        try:
            self.index = ChunkIndex(self.store.root / INDEX_FILE)
        except BaseException:
            self.store.close()
            raise
        self.reuse_blobs: set[Digest] = set()
        # Layers that several platforms share are converted once.
        self.converted: dict[Digest, tuple[Descriptor, LayerConversion]] = {}

    def pull_options(self) -> PullOptions:
        # The source images only need to be in the store. Without "oci",
        # pull would also load each platform into this machine's docker or
        # containerd, and fail the conversion when that load fails. The
        # store is fitted to its size limit once, after the push: a pull's
        # gc would wait for this conversion to close the store.
        return PullOptions(
            store=self.store.root,
            into="oci",
            insecure_registries=self.options.insecure_registries,
            credentials=self.options.credentials,
            config=dataclasses.replace(self.config, max_store_size=None),
        )

    def close(self) -> None:
        self.index.close()
        self.store.close()


def convert(source: str, destination: str, options: ConvertOptions) -> ConvertResult:
    """Convert ``source`` into chunked layers and push it as ``destination``."""
    started = time.monotonic()
    src, dst = Reference.parse(source), Reference.parse(destination)
    if dst.digest:
        # A converted image has a new digest, so the registry would reject
        # the push with DIGEST_INVALID after every layer was converted.
        raise UsageError(
            f"{destination}: the destination must be a tag, not a digest",
            hint="name a tag, e.g. REPOSITORY:v1-chunked",
        )
    session = _Session(options)
    pulling = False
    try:
        # A push the registry rejects would fail only after every layer
        # was converted.
        with RegistryWriter(dst, session.settings, session.credentials) as writer:
            writer.check_push_access()
        # From here on, pulls add images to the store, even if a later step fails.
        pulling = True
        if options.reuse_from is not None:
            for reference in options.reuse_from:
                _add_reuse_source(Reference.parse(reference), session)
        else:
            _add_default_reuse_source(dst, session)
        top, images = _fetch_images(src, session)
        converted = [_convert_image(image, session) for image in images]
        top_body, pushed, mounted = _push(src, dst, top, images, converted, session)
    except KeyboardInterrupt:
        # Ctrl-C ends the command at once, without a gc.
        pulling = False
        raise
    finally:
        session.close()
        if pulling:
            _fit_store(session, str(dst))
    # A layer that several platforms share is listed once.
    layers = {layer.source: layer for image in converted for layer in image.layers}
    return ConvertResult(
        source=str(src),
        destination=str(dst),
        digest=Digest.of(top_body),
        layers=list(layers.values()),
        bytes_pushed=pushed,
        blobs_mounted=mounted,
        seconds=time.monotonic() - started,
    )


def _fit_store(session: _Session, subject: str) -> None:
    """Fit the store to max_store_size once, after the conversion's pulls."""
    if session.config.max_store_size is None:
        return
    try:
        store = Store(session.store.root)
    except ApparateError as error:
        log.warning("%s: store not fitted to max_store_size: %s", subject, error)
        return
    try:
        fit_to_limit(store, session.config.max_store_size, (), subject)
    finally:
        store.close()


def _add_reuse_source(
    reference: Reference, session: _Session, named: bool = True
) -> None:
    """Make the frames of a converted image available for reuse.

    An image the user ``named`` that has no converted layer has no frames,
    which is worth a warning: it was named to save work.
    """
    _, images = _fetch_images(reference, session)
    layers = [layer for image in images for layer in image.parsed.layers]
    if named and not any(is_chunked(layer) for layer in layers):
        log.warning(
            "%s has no converted layers, so it has no frames to reuse; name "
            "an image that apparate convert wrote", reference,
        )  # fmt: skip
    for image in images:
        for layer in image.parsed.layers:
            if not is_chunked(layer):
                continue
            try:
                table = _stored_table(layer, session)
            except ChunkedLayerError as error:
                # The other layers' frames are still worth reusing.
                log.warning("%s: not reusing frames of layer %s: %s",
                            reference, layer.digest, error)  # fmt: skip
                continue
            if not session.index.has_blob(layer.digest):
                record_layer(
                    session.index, layer, table, str(layer.digest),
                    session.store.blob_path(layer.digest),
                )  # fmt: skip
            session.reuse_blobs.add(layer.digest)


def _add_default_reuse_source(destination: Reference, session: _Session) -> None:
    """Reuse the image the destination tag points to now, if there is one.

    It is only a default: when it cannot be read, the conversion goes on
    without it.
    """
    try:
        _add_reuse_source(destination, session, named=False)
    except NotFound:
        log.info("%s does not exist yet; no frames to reuse", destination)
    except ApparateError as error:
        log.warning("not reusing frames of %s: %s", destination, error)


def _fetch_top(reference: Reference, session: _Session) -> tuple[bytes, str]:
    with RegistryClient(reference, session.settings, session.credentials) as client:
        fetched = fetch_manifest(
            client, session.store, reference.lookup, reference.digest
        )
    session.store.put_blob(fetched.body, fetched.digest)
    document = parse_json(fetched.body, f"manifest of {reference}")
    return fetched.body, media_type_of(document, fetched.media_type)


def _fetch_images(
    reference: Reference, session: _Session
) -> tuple[tuple[bytes, str], list[_SourceImage]]:
    """Pull every platform of ``reference`` into the store, verified.

    Returns the top manifest or index, with its media type, and the images.
    """
    body, media_type = _fetch_top(reference, session)
    if media_type not in INDEX_TYPES:
        return (body, media_type), [_pulled(reference, Digest.of(body), None, session)]
    index = parse_index(
        parse_json(body, f"index of {reference}"), f"index of {reference}"
    )
    # Entries are matched by position, so a manifest listed twice keeps the
    # platform of each of its entries.
    raw_entries = json.loads(body)["manifests"]
    wanted = {id(entry) for entry in image_entries(index)}
    if not wanted:
        # Pushing it would tag an index of no images at the destination.
        raise UsageError(
            f"the index of {reference} lists no image manifest to convert, only "
            "attestations or nested indexes",
            hint="convert an image or an index of platform images",
        )
    images = [
        _pulled(reference, entry.digest, raw.get("platform"), session, raw)
        for entry, raw in zip(index.manifests, raw_entries, strict=True)
        if id(entry) in wanted
    ]
    return (body, media_type), images


def _pulled(
    reference: Reference,
    digest: Digest,
    platform: dict[str, Any] | None,
    session: _Session,
    entry: dict[str, Any] | None = None,
) -> _SourceImage:
    """Pull one manifest of ``reference`` by digest. ``entry`` is its index entry."""
    by_digest = Reference(reference.registry, reference.repository, None, digest)
    # A manifest pulled by digest is what the index names, whatever its
    # platform, so it is not checked against this machine's.
    options = session.pull_options()
    options.check_platform = False
    pull(by_digest, options)
    body = session.store.read_blob(digest)
    parsed = parse_manifest(
        parse_json(body, f"manifest {digest}"), f"manifest {digest}"
    )
    config = session.store.read_blob(parsed.config.digest)
    diff_ids = parse_diff_ids(parse_json(config, "config"), f"config of {by_digest}")
    annotations = (entry or {}).get("annotations")
    descriptor = Descriptor(
        parsed.media_type,
        digest,
        len(body),
        annotations=dict(annotations) if isinstance(annotations, dict) else {},
    )
    return _SourceImage(descriptor, body, parsed, diff_ids, platform)


def is_chunked(layer: Descriptor) -> bool:
    return is_chunked_layer(layer.media_type, layer.annotations)


def _stored_table(layer: Descriptor, session: _Session) -> ChunkTable:
    path = session.store.blob_path(layer.digest)
    return read_stored_table(path, layer.annotations, f"layer {layer.digest}")


def _convert_image(image: _SourceImage, session: _Session) -> _ConvertedImage:
    layers = [
        _convert_layer(layer, diff_id, session)
        for layer, diff_id in zip(image.parsed.layers, image.diff_ids, strict=True)
    ]
    descriptors = [descriptor for descriptor, _ in layers]
    conversions = [conversion for _, conversion in layers]
    config = image.parsed.config
    if all(c.kept for c in conversions) and image.parsed.media_type == OCI_MANIFEST:
        body = image.body
    else:
        body = _oci_manifest(image.body, config, descriptors)
        session.store.put_blob(body, Digest.of(body))
    manifest = Descriptor(OCI_MANIFEST, Digest.of(body), len(body))
    return _ConvertedImage(
        manifest, body, [config, *descriptors], conversions, image.platform
    )


def _oci_manifest(source: bytes, config: Descriptor, layers: list[Descriptor]) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": str(config.digest),
            "size": config.size,
        },
        "layers": [layer.to_json() for layer in layers],
    }
    annotations = json.loads(source).get("annotations")
    if annotations:
        document["annotations"] = annotations
    return json.dumps(document, separators=(",", ":")).encode()


def _convert_layer(
    layer: Descriptor, diff_id: Digest, session: _Session
) -> tuple[Descriptor, LayerConversion]:
    done = session.converted.get(layer.digest)
    if done is None:
        done = session.converted[layer.digest] = _convert_new_layer(
            layer, diff_id, session
        )
    return done


def _convert_new_layer(
    layer: Descriptor, diff_id: Digest, session: _Session
) -> tuple[Descriptor, LayerConversion]:
    table = _readable_table(layer, session) if is_chunked(layer) else None
    if table is not None:
        kept = LayerConversion(
            layer.digest,
            layer.digest,
            layer.size,
            layer.size,
            len(table.entries),
            0,
            True,
        )
        return layer, kept

    subject = f"layer {layer.digest}"
    try:
        converted = _write_converted(layer, diff_id, default_chunker(), session)
    except MalformedTar as error:
        log.warning("%s: %s; cutting it with plain FastCDC instead", subject, error)
        converted = _write_converted(layer, diff_id, fallback_chunker(), session)
    session.index.add_table(converted.digest, converted.table)
    descriptor = Descriptor(
        OCI_ZSTD_LAYER, converted.digest, converted.size,
        annotations=table_annotations(converted.footer),
    )  # fmt: skip
    conversion = LayerConversion(
        layer.digest, converted.digest, layer.size, converted.size,
        len(converted.table.entries), converted.frames_reused, False,
    )  # fmt: skip
    log.info("%s: converted to %s, %d bytes", subject, converted.digest, converted.size)
    if session.options.on_layer:
        session.options.on_layer(conversion)
    return descriptor, conversion


def _readable_table(layer: Descriptor, session: _Session) -> ChunkTable | None:
    """Return a chunked source layer's checked table, or None to convert it anew.

    A layer of another format version, or with a damaged table, is still a
    valid zstd layer, so it is converted like any other.
    """
    subject = f"layer {layer.digest}"
    try:
        table = _stored_table(layer, session)
        if not session.index.has_blob(layer.digest):
            blob = session.store.blob_path(layer.digest)
            record_layer(session.index, layer, table, subject, blob)
    except ChunkedLayerError as error:
        log.warning("%s: converting it again: %s", subject, error)
        return None
    return table


def _write_converted(
    layer: Descriptor, diff_id: Digest, chunker: Chunker, session: _Session
) -> ConvertedLayer:
    """Write the chunked blob of a stored layer into the store, checked."""
    encoder = Encoder(session.options.level)
    # Only frames of the images named for reuse: copying frames from
    # whatever the store contains would make the output depend on the machine.
    frames = StoredFrames(
        session.store, session.index, kinds=(LAYER,), blobs=session.reuse_blobs
    )
    with open(session.store.blob_path(layer.digest), "rb") as blob:
        tar = open_tar_stream(blob, layer.media_type)
        # The converted blob's digest is known only once it is written.
        with session.store.ingest(layer.digest) as writer:
            converted = write_chunked_layer(
                tar, writer.write, chunker, encoder, frames, session.options.workers
            )
            if converted.footer.table_length > MAX_TABLE_BYTES:
                raise UsageError(
                    f"layer {layer.digest}: its {len(converted.table.entries)} "
                    f"chunks need a {converted.footer.table_length}-byte table, "
                    f"over the {MAX_TABLE_BYTES} bytes a chunked layer may have",
                    "pull this image unconverted",
                )
            if converted.diff_id != diff_id:
                raise DiffIDMismatch(
                    f"layer {layer.digest}: its tar is {converted.diff_id}, but the "
                    f"config says {diff_id}"
                )
            writer.commit(converted.digest)
    return converted


def _top_document(
    top: tuple[bytes, str],
    sources: list[_SourceImage],
    converted: list[_ConvertedImage],
    at_destination: Callable[[Digest], bool],
) -> tuple[bytes, str]:
    """Build the index (or pick the single manifest) to tag at the destination.

    ``at_destination`` returns whether the destination has a manifest
    that the conversion does not push, such as an attestation.
    """
    body, media_type = top
    if media_type not in INDEX_TYPES:
        return converted[0].body, OCI_MANIFEST
    unchanged = all(
        image.manifest.digest == source.manifest.digest
        for image, source in zip(converted, sources, strict=True)
    )
    # An index whose images are all unchanged is kept byte for byte, with
    # its attestations and annotations, so converting twice changes nothing.
    # The registry rejects it unless it has every manifest the index names.
    if unchanged and media_type == OCI_INDEX:
        pushed = {image.manifest.digest for image in converted}
        index = parse_index(parse_json(body, "index"), "index")
        others = [e.digest for e in index.manifests if e.digest not in pushed]
        if all(at_destination(digest) for digest in others):
            return body, OCI_INDEX
        log.info("the destination lacks manifests that the source index names, "
                 "so a new index of the converted images is pushed")  # fmt: skip
    manifests = []
    for image, source in zip(converted, sources, strict=True):
        item = image.manifest.to_json()
        if source.manifest.annotations:
            item["annotations"] = dict(sorted(source.manifest.annotations.items()))
        if image.platform:
            item["platform"] = image.platform
        manifests.append(item)
    document: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    }  # fmt: skip
    source_index = json.loads(body)
    if (
        isinstance(source_index.get("annotations"), dict)
        and source_index["annotations"]
    ):
        document["annotations"] = source_index["annotations"]
    _warn_left_out(source_index, sources)
    return json.dumps(document, separators=(",", ":")).encode(), OCI_INDEX


def _warn_left_out(source_index: dict[str, Any], sources: list[_SourceImage]) -> None:
    """Warn of the source index's entries that the new index leaves out."""
    converted = {str(source.manifest.digest) for source in sources}
    left_out = [
        entry for entry in source_index.get("manifests", [])
        if entry.get("digest") not in converted
    ]  # fmt: skip
    if left_out:
        log.warning(
            "the converted index leaves out %d of the source's entries, such as "
            "attestations: they describe the source's manifests, not the "
            "converted ones", len(left_out),
        )  # fmt: skip


def _push(
    source: Reference,
    destination: Reference,
    top: tuple[bytes, str],
    sources: list[_SourceImage],
    images: list[_ConvertedImage],
    session: _Session,
) -> tuple[bytes, int, int]:
    """Push the blobs the destination lacks, then manifests, then the tag.

    Returns the manifest or index tagged, the bytes uploaded and the number
    of blobs mounted.
    """
    # A blob can be mounted only from another repository of the registry.
    same_registry = source.registry == destination.registry
    mount_from: tuple[str, ...] = ()
    if same_registry and source.repository != destination.repository:
        mount_from = (source.repository,)
    with RegistryWriter(
        destination, session.settings, session.credentials, mount_from
    ) as writer:
        pushed, mounted = _push_blobs(writer, mount_from, images, session)
        top_body, top_type = _top_document(top, sources, images, writer.manifest_exists)
        if top_type in INDEX_TYPES:
            for image in images:
                writer.put_manifest(
                    str(image.manifest.digest), image.body, OCI_MANIFEST
                )
        writer.put_manifest(destination.lookup, top_body, top_type)
    return top_body, pushed, mounted


def _push_blobs(
    writer: RegistryWriter,
    mount_from: tuple[str, ...],
    images: list[_ConvertedImage],
    session: _Session,
) -> tuple[int, int]:
    """Mount or upload each blob the destination lacks.

    Returns the bytes uploaded and the number of blobs mounted.
    """
    pushed = mounted = 0
    blobs = {blob.digest: blob for image in images for blob in image.blobs}
    in_source = {digest for image in images for digest in image.source_blobs}
    for blob in blobs.values():
        if writer.blob_exists(blob):
            continue
        location = None
        if mount_from and blob.digest in in_source:
            location = writer.mount_blob(blob, mount_from[0])
            if location is None:
                mounted += 1
                continue
        # A mount the registry could not do started an upload session.
        writer.upload_blob(blob, session.store.blob_path(blob.digest), location)
        pushed += blob.size
    return pushed, mounted
