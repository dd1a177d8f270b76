"""``apparate pull``: fetch an image's missing blobs, verify them, tag the image."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from apparate.chunked.format import ChunkTable, is_chunked_layer
from apparate.chunked.packer import LocalPacker
from apparate.chunked.reader import read_stored_table
from apparate.config import Config, Mirror, load_config
from apparate.delta.assembler import (
    Assembler,
    DeltaUnavailable,
    RangeJournal,
    RemoteTable,
    discard_rebuild,
    record_layer,
    resumed_bytes,
)
from apparate.delta.image_plan import ImagePlans
from apparate.delta.prefetch import TablePrefetch
from apparate.digest import Digest, DigestVerifier
from apparate.errors import (
    ApparateError,
    AuthError,
    ChunkedLayerError,
    DiffIDMismatch,
    DigestMismatch,
    ImageImportError,
    NotFound,
    PlatformNotFound,
    RegistryError,
    RegistryUnreachable,
    ServerError,
    StoreError,
    TransferFailed,
    TransferTimedOut,
    TruncatedBody,
    VerificationError,
    reason_for_warning,
)
from apparate.image import ResolvedImage, resolve_image
from apparate.importers import Daemons, import_stored
from apparate.importers.sizes import LayerSizes
from apparate.layers import DiffIDVerifier
from apparate.manifest import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Descriptor,
    as_oci_manifest,
    parse_json,
)
from apparate.platform import Platform
from apparate.progress import PullObserver
from apparate.reference import Reference
from apparate.registry.client import RangeFetchStopped, RangesUnsupported
from apparate.registry.credentials import Credentials, CredentialStore
from apparate.registry.transport import TransportSettings
from apparate.result import LayerResult, PullResult
from apparate.sources.pool import MIRROR, Source, SourcePool
from apparate.sources.selection import list_sources, open_pool, save_figures
from apparate.store.chunk_index import INDEX_FILE, ChunkIndex
from apparate.store.collector import after_pull
from apparate.store.history import PullHistory
from apparate.store.layout import (
    DELTA_PARTIAL,
    BlobWriter,
    Store,
    StoredElsewhere,
    default_store_path,
)
from apparate.warnings_kept import WarningRecorder

log = logging.getLogger(__name__)

# How often a layer waiting for another one checks whether the pull stopped.
_POLL_SECONDS = 0.1
# Failures of a delta rebuild, or of fetching its table, after which the
# layer is fetched whole. TransferFailed, a TruncatedBody, is caught before
# them: see _failed_rebuild.
_WHOLE_LAYER_INSTEAD = (
    ChunkedLayerError, DeltaUnavailable, RangesUnsupported, TruncatedBody,
    ServerError,
)  # fmt: skip

DEFAULT_PARALLEL_LAYERS = 4


@dataclass
class PullOptions:
    """Settings of a pull that the CLI builds from flags and environment."""

    store: Path | None = None
    platform: Platform | None = None
    insecure_registries: Iterable[str] = ()
    credentials: dict[str, Credentials] = field(default_factory=dict)
    parallel_layers: int = DEFAULT_PARALLEL_LAYERS
    # Whether to compare a single manifest's platform with the one wanted; a
    # manifest named by an index entry's digest needs no check.
    check_platform: bool = True
    # Work out what would be fetched (chunk tables included) without
    # fetching layers or changing the store.
    dry_run: bool = False
    # Mirrors given on the command line, tried before those of config.toml:
    # URLs of mirrors that serve by digest, or Mirror settings.
    mirrors: Iterable[str | Mirror] = ()
    # Settings from config.toml; None reads the file.
    config: Config | None = None
    observer: PullObserver = field(default_factory=PullObserver)
    # Where the stored image goes (see apparate.importers.target); None means
    # APPARATE_INTO, else ``into`` in config.toml, else auto.
    into: str | None = None
    daemons: Daemons = field(default_factory=Daemons.from_environment)


def pull(reference: str | Reference, options: PullOptions | None = None) -> PullResult:
    """Pull one image into the local store and return what it cost."""
    options = options or PullOptions()
    started = time.monotonic()
    ref = reference if isinstance(reference, Reference) else Reference.parse(reference)
    # A dry run creates no store, sweeps no partials and removes no damaged
    # blob. NOTE: SQLite may still leave the chunk index's -wal and -shm
    # files beside a database it reads.
    store = Store(
        options.store or default_store_path(),
        create=not options.dry_run,
        read_only=options.dry_run,
    )
    try:
        with WarningRecorder().attached() as warnings:
            try:
                result = _pull(store, ref, options, started)
            except ImageImportError as error:
                if error.pulled is not None:
                    error.pulled = dataclasses.replace(
                        error.pulled, warnings=list(warnings.messages)
                    )
                raise
    finally:
        store.close()
    # Taken last, so that the warnings of the import and the gc are listed too.
    return dataclasses.replace(result, warnings=list(warnings.messages))


def _pull(
    store: Store, ref: Reference, options: PullOptions, started: float
) -> PullResult:
    settings = TransportSettings.from_environment(options.insecure_registries)
    credentials = CredentialStore.from_environment(options.credentials)
    wanted = options.platform or Platform.host()
    config = options.config or load_config()
    figures = None if options.dry_run else store.root / INDEX_FILE
    specs = list_sources(ref, options.mirrors, config)
    pool = open_pool(ref, specs, settings, credentials, config.stall_timeout, figures)

    # Set when one layer fails or the pull is interrupted, to stop the rest.
    cancelled = threading.Event()
    with (
        contextlib.closing(pool),
        ChunkIndex(store.root / INDEX_FILE, read_only=options.dry_run) as index,
        TablePrefetch(pool, store, str(ref), cancelled) as tables,
    ):
        image, resolver = _resolve(pool, store, ref, wanted, options, tables)
        options.observer.resolved(str(ref), image.manifest.digest, image.platform)
        if options.dry_run:
            layers = _plan_layers(store, index, image, tables)
        else:
            layers = _fetch_layers(
                pool, store, index, image, options, tables, cancelled
            )
        save_figures(pool, figures)

    fetched = sum(layer.bytes_fetched for layer in layers)
    if options.dry_run:
        up_to_date = not fetched and _names_already(store, str(ref), image)
    else:
        tagged = _store_metadata(store, image)
        index_digest = image.index.digest if image.index else None
        before = store.tag(str(ref), tagged, image.manifest.digest, index_digest)
        up_to_date = before == tagged.digest and not fetched
    if up_to_date:
        # Nothing was needed, so nothing counts as reused or resumed either.
        layers = [
            dataclasses.replace(layer, bytes_reused=0, bytes_resumed=0)
            for layer in layers
        ]
    result = PullResult(
        reference=str(ref),
        digest=image.manifest.digest,
        platform=image.platform,
        store=str(store.root),
        index_digest=image.index.digest if image.index else None,
        layers=layers,
        bytes_fetched=fetched,
        seconds=time.monotonic() - started,
        dry_run=options.dry_run,
        bytes_by_source=pool.bytes_by_source(),
        up_to_date=up_to_date,
        resolved_by=_tag_resolver(pool, ref, resolver),
    )
    if options.dry_run:
        return result
    _record(store, result)
    # Stored and recorded first, so a failed import can be retried with
    # ``apparate import`` without fetching. The store is fitted to its size
    # limit after the import, which then reads a store no gc changes.
    try:
        imported = import_stored(
            store, str(ref), options.into, options.daemons, config.into
        )
    except ImageImportError as error:
        error.pulled = result
        raise
    finally:
        after_pull(store, result, config.max_store_size)
    return dataclasses.replace(result, imported=imported)


def _resolve(
    pool: SourcePool,
    store: Store,
    ref: Reference,
    wanted: Platform,
    options: PullOptions,
    tables: TablePrefetch,
) -> tuple[ResolvedImage, Source]:
    """Resolve the image at the first source that may resolve it and succeeds.

    Mirrors allowed to resolve tags, or any mirror for a reference by digest,
    are tried first, the origin last. A mirror that fails is skipped with a
    warning. The chunk tables of the manifest found start downloading while
    its config is fetched. Returns the image and the source that served it.
    """
    resolvers = pool.resolvers(by_digest=ref.digest is not None)
    for source in resolvers:
        try:
            image = resolve_image(
                source.client, store, ref, wanted, options.platform is not None,
                options.check_platform, tables.start,
            )  # fmt: skip
            return image, source
        except (
            AuthError, NotFound, PlatformNotFound, RegistryError, VerificationError,
        ) as error:  # fmt: skip
            if source is pool.origin:
                if isinstance(error, RegistryUnreachable):
                    _suggest_digest_pull(error, pool, ref)
                raise
            log.warning(
                "%s: mirror %s could not resolve it (%s); asking the next source",
                ref, source.name, error,
            )  # fmt: skip
    raise AssertionError("the origin is always a resolver")


def _suggest_digest_pull(
    error: RegistryUnreachable, pool: SourcePool, ref: Reference
) -> None:
    """Point the error of an unreachable registry at mirrors that could serve.

    Mirrors not allowed to resolve tags were not asked for the tag, but they
    serve the image by digest while the registry is down.
    """
    if ref.digest is not None:
        return
    idle = [
        source.name
        for source in pool.sources
        if source.role == MIRROR and not source.resolve and source.measure.reachable
    ]
    if not idle:
        return
    if len(idle) == 1:
        mirrors, pronoun = f"mirror {idle[0]} does", "it"
    else:
        mirrors, pronoun = f"mirrors {', '.join(idle)} do", "them"
    error.hint = (
        f"{error.hint}. The {mirrors} not resolve tags: pull by digest "
        f"({ref.name}@sha256:...) to fetch from {pronoun}, or allow {pronoun} "
        "to resolve tags (resolve = true, or --resolving-mirror)"
    )


def _failed_rebuild(error: TransferFailed) -> TransferFailed:
    """Return the error that ends a pull whose rebuild every source failed.

    Each source left it silent or kept dropping the connection. The whole
    layer would come over the same link, and often costs many times the
    ranges a rebuild needs, so the pull fails instead. The ranges already
    written stay in the partial rebuild for the next pull.
    """
    return type(error)(
        error.message,
        hint="the registry or the link is down or overloaded; the ranges "
        "fetched are kept, and the same command run again resumes the layer",
    )


def _tag_resolver(pool: SourcePool, ref: Reference, resolver: Source) -> str | None:
    """Return the mirror that resolved the reference's tag, or None.

    None when the registry did, or when the reference has a digest, which
    names the content whichever source serves it. A mirror's tag may lag
    behind the registry's, so the summary names it.
    """
    if ref.digest is not None or resolver is pool.origin:
        return None
    return resolver.name


def _record(store: Store, result: PullResult) -> None:
    """Add the pull to the store's history; a failure there does not fail it."""
    try:
        history = PullHistory(store.root / INDEX_FILE)
        try:
            history.record(result)
        finally:
            history.close()
    except StoreError as error:
        log.warning("%s: pull not recorded: %s", result.reference, error)


def _names_already(store: Store, reference: str, image: ResolvedImage) -> bool:
    """Tell whether ``reference`` already names this manifest in the store."""
    return any(
        stored.reference == reference
        and stored.source_manifest == image.manifest.digest
        for stored in store.images()
    )


def _store_metadata(store: Store, image: ResolvedImage) -> Descriptor:
    """Store config, manifest and index; return the manifest to tag.

    Their digests were checked on arrival. A Docker schema 2 manifest is kept
    as the registry sent it and tagged through an OCI copy, as OCI layouts
    list only OCI media types.
    """
    store.put_blob(image.config, image.parsed.config.digest)
    store.put_blob(image.manifest.body, image.manifest.digest)
    if image.index:
        store.put_blob(image.index.body, image.index.digest)
    if image.parsed.media_type != DOCKER_MANIFEST:
        return image.descriptor
    body = as_oci_manifest(parse_json(image.manifest.body, "manifest"))
    converted = Descriptor(OCI_MANIFEST, Digest.of(body), len(body))
    store.put_blob(body, converted.digest)
    return converted


def _fetch_layers(
    pool: SourcePool,
    store: Store,
    index: ChunkIndex,
    image: ResolvedImage,
    options: PullOptions,
    tables: TablePrefetch,
    cancelled: threading.Event,
) -> list[LayerResult]:
    """Fetch the layers the store lacks, several at once; stop all on a failure."""
    observer = options.observer
    layers = image.parsed.layers
    unique = _missing_layers(store, image)
    missing_digests = {layer.digest for layer, _ in unique}
    for layer in layers:
        observer.layer_planned(
            layer.digest, layer.size, layer.digest not in missing_digests
        )

    _check_repeated_layers(layers, image.diff_ids, str(image.reference))
    plans = ImagePlans(index, tables, [layer for layer, _ in unique])
    fetcher = _LayerFetcher(
        pool, store, index, str(image.reference), observer, cancelled, plans,
        [layer for layer, _ in unique],
    )  # fmt: skip
    # The bytes fetched, reused and resumed of each missing blob.
    figures: dict[Digest, tuple[int, int, int]] = {}
    if unique:
        workers = max(1, min(options.parallel_layers, len(unique)))
        executor = ThreadPoolExecutor(workers, thread_name_prefix="layer")
        try:
            futures = [executor.submit(fetcher.fetch, *item) for item in unique]
            _wait_all(futures, cancelled)
        except KeyboardInterrupt:
            # A layer thread blocked on a silent server would hold Ctrl-C for
            # a whole read timeout. It stops at its next check of
            # ``cancelled``, and the store contains only verified blobs.
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown()
        for (layer, _), future in zip(unique, futures, strict=True):
            fetched = future.result()
            reused = fetcher.reused.get(layer.digest, max(layer.size - fetched, 0))
            resumed = fetcher.resumed.get(layer.digest, 0)
            figures[layer.digest] = (fetched, reused, resumed)
        _record_tar_sizes(store, layers, fetcher.tar_sizes)
    return _layer_results(layers, missing_digests, figures)


def _missing_layers(
    store: Store, image: ResolvedImage
) -> list[tuple[Descriptor, Digest]]:
    """Return the layers the store lacks with their diff_ids, each blob once."""
    missing = {
        layer.digest: (layer, diff_id)
        for layer, diff_id in zip(image.parsed.layers, image.diff_ids, strict=True)
        if not store.has_blob(layer.digest, layer.size)
    }
    return list(missing.values())


def _record_tar_sizes(
    store: Store, layers: list[Descriptor], sizes: dict[Digest, int]
) -> None:
    """Keep the tar sizes the diff_id checks counted, so imports need not count."""
    if not sizes:
        return
    known = LayerSizes(store)
    try:
        for layer in layers:
            if layer.digest in sizes:
                known.record(layer, sizes[layer.digest])
    finally:
        known.close()


def _plan_layers(
    store: Store, index: ChunkIndex, image: ResolvedImage, tables: TablePrefetch
) -> list[LayerResult]:
    """Report what a pull would fetch per layer, fetching only chunk tables.

    The plans are the ones a pull makes, so the figures are what it fetches,
    unless stored frames turn out to be damaged or a rebuilt layer fails
    verification, when it fetches more.
    """
    missing = [layer for layer, _ in _missing_layers(store, image)]
    plans = ImagePlans(index, tables, missing)
    planned = {layer.digest: _planned_bytes(store, layer, plans) for layer in missing}
    return _layer_results(image.parsed.layers, set(planned), planned)


def _layer_results(
    layers: list[Descriptor],
    missing: set[Digest],
    figures: dict[Digest, tuple[int, int, int]],
) -> list[LayerResult]:
    """Return one result per manifest layer.

    ``figures`` maps each missing blob to its bytes fetched, reused and
    resumed, and a stored blob counts as reused whole. A layer listed twice
    is one blob: missing at every place, but its bytes count at the first
    place only.
    NOTE: a blob that an interrupted pull stored whole counts as reused too,
    since the store does not record which pull stored a blob.
    """
    results = []
    seen: set[Digest] = set()
    for layer in layers:
        first = layer.digest not in seen
        seen.add(layer.digest)
        fetched, reused, resumed = (
            figures.get(layer.digest, (0, layer.size, 0)) if first else (0, 0, 0)
        )
        result = LayerResult(
            layer.digest, layer.media_type, layer.size, layer.digest in missing,
            fetched, reused, resumed,
        )  # fmt: skip
        results.append(result)
    return results


def _kept_bytes(store: Store, layer: Descriptor) -> int:
    """Bytes of a layer kept from an interrupted pull, which a pull resumes after."""
    return min(_kept_size(store.partial_path(layer.digest)), layer.size)


def _kept_size(partial: Path) -> int:
    try:
        return partial.stat().st_size
    except FileNotFoundError:
        return 0


def _planned_bytes(
    store: Store, layer: Descriptor, plans: ImagePlans
) -> tuple[int, int, int]:
    """Return the bytes a pull would fetch, reuse and resume for a layer.

    The fetched bytes count every attempt at the chunk table, as a pull
    counts them. The resumed bytes are those kept from an interrupted pull,
    and the reused bytes the rest of the blob, not fetched.
    """
    if not is_chunked_layer(layer.media_type, layer.annotations):
        kept_bytes = _kept_bytes(store, layer)
        return layer.size - kept_bytes, 0, kept_bytes
    try:
        remote, plan = plans.plan_for(layer)
    except TransferTimedOut:
        # As in a pull, which would fail rather than fetch the whole layer.
        raise
    except _WHOLE_LAYER_INSTEAD as error:
        subject = plans.subject(layer)
        reason = reason_for_warning(error, subject)
        log.warning("%s: would fetch the whole layer: %s", subject, reason)
        return layer.size, 0, 0
    remaining = plan
    partial = store.partial_path(layer.digest, DELTA_PARTIAL)
    if _kept_size(partial):
        # The frames a killed pull wrote, which the next pull keeps.
        journal = RangeJournal(partial, fresh=False)
        remaining = journal.without_done(plan, remote.table)
    fetched = remote.fetched + remaining.bytes_to_fetch
    resumed = resumed_bytes(remote, plan, remaining)
    distinct = _distinct_bytes(remote, remaining.bytes_to_fetch)
    return fetched, layer.size - distinct - resumed, resumed


def _distinct_bytes(remote: RemoteTable, frame_bytes: int) -> int:
    """Return the blob bytes a rebuild fetches, each counted once however many attempts."""
    table_bytes = len(remote.tail) if remote.fetched else 0
    return table_bytes + frame_bytes


def _warn_not_indexed(subject: str, error: Exception) -> None:
    reason = reason_for_warning(error, subject)
    log.warning("%s: chunks not indexed, the layer stays usable: %s", subject, reason)


def _check_repeated_layers(
    layers: list[Descriptor], diff_ids: list[Digest], image: str
) -> None:
    """Reject a config that gives one layer blob two different diff_ids."""
    seen: dict[Digest, Digest] = {}
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        if seen.setdefault(layer.digest, diff_id) != diff_id:
            raise DiffIDMismatch(
                f"{image}: layer {layer.digest} appears twice with the diff_ids "
                f"{seen[layer.digest]} and {diff_id}"
            )


def _wait_all(futures: list[Future[int]], cancelled: threading.Event) -> None:
    """Wait for every layer; on the first failure stop the rest and raise it.

    Layers that failed only because they were stopped are not the cause,
    so another layer's error is preferred to theirs. An interrupt (Ctrl-C)
    stops the layers too, instead of waiting for them to finish.
    """
    try:
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        cancelled.set()
        raise
    if any(future.exception() for future in done):
        cancelled.set()
        for future in pending:
            future.cancel()
    wait(futures)
    errors = [
        future.exception()
        for future in futures
        if not future.cancelled() and future.exception()
    ]
    errors.sort(key=lambda error: isinstance(error, _Cancelled | RangeFetchStopped))
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _closing(verifier: DiffIDVerifier) -> Iterator[None]:
    try:
        yield
    finally:
        verifier.close()


class _StalePartial(Exception):
    """Bytes kept from an earlier pull failed verification and were dropped."""


class _Cancelled(ApparateError):
    """Another layer failed, so this one stopped early."""


class _LayerFetcher:
    """Download one layer blob, verify digest and diff_id, then commit it."""

    def __init__(
        self,
        pool: SourcePool,
        store: Store,
        index: ChunkIndex,
        image: str,
        observer: PullObserver,
        cancelled: threading.Event,
        plans: ImagePlans,
        fetching: list[Descriptor],
    ) -> None:
        self._pool = pool
        self._plans = plans
        self._store = store
        self._index = index
        self._image = image
        self._observer = observer
        self._cancelled = cancelled
        # The tar size of each layer verified whole, for docker imports.
        self.tar_sizes: dict[Digest, int] = {}
        # The bytes of each layer downloaded whole, attempts that failed
        # verification included, since they crossed the network too.
        self._downloaded: dict[Digest, int] = {}
        # The bytes of each stored layer copied from the store, which did
        # not cross the network. Failed attempts fetch bytes again, so the
        # fetched count cannot give this.
        self.reused: dict[Digest, int] = {}
        # The bytes of each stored layer kept from an interrupted pull's
        # partial download. They crossed the network in that pull, not in
        # this one.
        self.resumed: dict[Digest, int] = {}
        # Set when a layer's fetch ends, stored or not, for the layers that
        # copy frames from it.
        self._ended = {layer.digest: threading.Event() for layer in fetching}
        # The bytes each layer's fetch may still write, which local packs
        # leave room for. The range threads of a layer update it too.
        self._to_write = {layer.digest: layer.size for layer in fetching}
        self._to_write_lock = threading.Lock()

    def fetch(self, layer: Descriptor, diff_id: Digest) -> int:
        """Store one layer, verified; return the bytes that crossed the network."""
        try:
            return self._fetch(layer, diff_id)
        except RangeFetchStopped:
            self._cancelled.set()
            subject = self._plans.subject(layer)
            raise _Cancelled(
                f"{subject}: stopped because another layer failed"
            ) from None
        except BaseException:
            # Any failure fails the pull. Stopping the other layers first
            # keeps those waiting on this one from fetching its frames.
            self._cancelled.set()
            raise
        finally:
            with self._to_write_lock:
                self._to_write[layer.digest] = 0
            self._ended[layer.digest].set()

    def _room_needed(self) -> int:
        with self._to_write_lock:
            return sum(self._to_write.values())

    def _wrote(self, layer: Digest, count: int) -> None:
        """Count ``count`` bytes of a layer as on disk, and report them."""
        with self._to_write_lock:
            self._to_write[layer] = max(self._to_write[layer] - count, 0)
        self._observer.layer_progress(layer, count)

    def _sibling_stored(self, blob: Digest) -> bool:
        """Wait until another layer's fetch ends; return whether it was stored.

        Returns False at once when the pull stops.
        """
        ended = self._ended.get(blob)
        while ended is not None and not ended.wait(_POLL_SECONDS):
            if self._cancelled.is_set():
                return False
        return self._store.has_blob(blob)

    def _fetch(self, layer: Descriptor, diff_id: Digest) -> int:
        subject = self._plans.subject(layer)
        stopped = _Cancelled(f"{subject}: stopped because another layer failed")
        if self._store.wait_for_other_writers(
            layer.digest, layer.size, self._cancelled.is_set
        ):
            log.info("%s: stored by another pull meanwhile", subject)
            self._observer.layer_done(layer.digest)
            return 0
        if self._cancelled.is_set():
            raise stopped
        spent = 0
        chunked = is_chunked_layer(layer.media_type, layer.annotations)
        if chunked:
            spent, stored = self._fetch_delta(layer, diff_id, subject)
            if stored:
                # A whole download that an earlier pull left is of no use now.
                self._store.discard_partial(self._store.partial_path(layer.digest))
                self._observer.layer_done(layer.digest)
                return spent
            # The rebuild may have reported far fewer bytes than this needs.
            self._observer.layer_needs(layer.digest, layer.size)
        try:
            downloaded = spent + self._fetch_whole_again(
                layer, diff_id, subject, stopped
            )
        except StoredElsewhere:
            log.info("%s: stored by another pull meanwhile", subject)
            self._observer.layer_done(layer.digest)
            return spent + self._downloaded.pop(layer.digest, 0)
        if chunked:
            discard_rebuild(self._store, layer.digest)
        log.info("%s: stored, %d bytes downloaded", subject, downloaded)
        self._observer.layer_done(layer.digest)
        return downloaded

    def _fetch_delta(
        self, layer: Descriptor, diff_id: Digest, subject: str
    ) -> tuple[int, bool]:
        """Rebuild a chunked layer from stored frames and fetched ranges.

        Returns the bytes fetched and whether the layer is now stored. It is
        not when it must be fetched whole: a bad table, a server that does
        not serve ranges, a failed range, or a rebuilt blob that failed
        verification (nothing of it is kept). The bytes count either way.
        """
        fetched = 0
        assembler = Assembler(
            self._pool, self._store, layer, subject,
            lambda count: self._wrote(layer.digest, count),
            self._cancelled, self._sibling_stored,
            lambda count: self._observer.layer_needs(layer.digest, count),
        )  # fmt: skip
        planned = False
        try:
            remote, plan = self._plans.plan_for(layer)
            planned = True
            fetched = remote.fetched
            with self._store.resumable(
                layer.digest, layer.size, DELTA_PARTIAL, self._cancelled.is_set
            ) as writer:
                fresh = not writer.existing
                journal = RangeJournal(writer.path, fresh)
                try:
                    assembler.assemble(remote, plan, diff_id, writer, journal)
                except DeltaUnavailable:
                    writer.discard()
                    journal.remove()
                    raise
                # Every frame was checked as it was written.
                self._record(layer, remote.table, subject, None)
                writer.commit()
                journal.remove()
        except RangeFetchStopped:
            raise _Cancelled(f"{subject}: stopped because another layer failed")
        except StoredElsewhere:
            log.info("%s: stored by another pull meanwhile", subject)
            return fetched, True
        except TransferFailed as error:
            if planned:
                raise _failed_rebuild(error) from error
            if isinstance(error, TransferTimedOut):
                # The table fetch timed out, so no range was fetched or kept.
                raise
            # The table's range kept dropping the connection. No range came,
            # and a link that drops range requests may still serve the layer.
            reason = reason_for_warning(error, subject)
            log.warning("%s: fetching the whole layer: %s", subject, reason)
            return fetched + assembler.bytes_fetched, False
        except _WHOLE_LAYER_INSTEAD as error:
            reason = reason_for_warning(error, subject)
            log.warning("%s: fetching the whole layer: %s", subject, reason)
            return fetched + assembler.bytes_fetched, False
        total = fetched + assembler.bytes_fetched
        distinct = _distinct_bytes(remote, assembler.blob_bytes_fetched)
        resumed = assembler.bytes_resumed
        self.reused[layer.digest] = max(layer.size - distinct - resumed, 0)
        self.resumed[layer.digest] = resumed
        log.info(
            "%s: rebuilt from chunks, %d of %d bytes fetched",
            subject,
            total,
            layer.size,
        )
        return total, True

    def _fetch_whole_again(
        self, layer: Descriptor, diff_id: Digest, subject: str, stopped: _Cancelled
    ) -> int:
        """Fetch a whole layer; start over when kept bytes or a mirror prove wrong.

        Each start over drops the kept bytes or a mirror, so the loop ends.
        Returns the bytes downloaded over all attempts.
        """
        self._downloaded[layer.digest] = 0
        while True:
            try:
                self._fetch_whole(layer, diff_id, subject, stopped)
                return self._downloaded.pop(layer.digest)
            except _StalePartial as stale:
                log.warning(
                    "%s: bytes kept from an earlier pull were wrong (%s); "
                    "downloading it again", subject, stale.__cause__ or stale,
                )  # fmt: skip
            except DigestMismatch as error:
                if not self._pool.blame(layer.digest, error):
                    raise

    def _fetch_whole(
        self, layer: Descriptor, diff_id: Digest, subject: str, stopped: _Cancelled
    ) -> None:
        if is_chunked_layer(layer.media_type, layer.annotations):
            self._fetch_verified(
                layer, diff_id, subject, stopped, None,
                lambda blob: self._index_chunked(layer, subject, blob),
            )  # fmt: skip
        else:
            self._fetch_packed(layer, diff_id, subject, stopped)

    def _fetch_packed(
        self, layer: Descriptor, diff_id: Digest, subject: str, stopped: _Cancelled
    ) -> None:
        packer = LocalPacker(self._store, self._index, subject, self._room_needed)
        try:
            self._fetch_verified(
                layer, diff_id, subject, stopped, packer,
                lambda blob: packer.finish(diff_id),
            )  # fmt: skip
        except BaseException:
            packer.abort()
            raise

    def _fetch_verified(
        self,
        layer: Descriptor,
        diff_id: Digest,
        subject: str,
        stopped: _Cancelled,
        packer: LocalPacker | None,
        before_commit: Callable[[Path], None],
    ) -> None:
        """Download a whole layer, verified.

        Bytes kept from an interrupted pull are hashed again and not fetched
        again. If the blob then fails verification, they are discarded too.
        ``before_commit`` receives the verified file before it is committed,
        to index its chunks: a pull killed after the commit would leave a
        stored layer that no later pull indexes.
        """
        tar_sink = packer.feed if packer else None
        with self._store.resumable(
            layer.digest, layer.size, stopped=self._cancelled.is_set
        ) as writer:
            kept = writer.existing
            diff_verifier = DiffIDVerifier(layer.media_type, diff_id, subject, tar_sink)
            verifier = DigestVerifier(
                layer.digest, subject, self._pool.host, layer.size
            )
            try:
                with _closing(diff_verifier):
                    if kept:
                        log.info("%s: resuming after %d stored bytes", subject, kept)
                        self._replay(writer, verifier, diff_verifier, layer)
                    self._download(
                        layer, subject, writer, diff_verifier, stopped, verifier
                    )
                    diff_verifier.verify()
                    self.tar_sizes[layer.digest] = diff_verifier.uncompressed_size
                    writer.flush()
                    before_commit(writer.path)
                    writer.commit()
                    self.reused[layer.digest] = 0
                    self.resumed[layer.digest] = kept
            except VerificationError as error:
                # Wrong bytes are dropped; a transfer that only broke off is
                # kept for the next pull to finish.
                if isinstance(error, TruncatedBody):
                    raise
                writer.discard()
                if kept:
                    raise _StalePartial(error) from None
                raise

    def _replay(
        self,
        writer: BlobWriter,
        verifier: DigestVerifier,
        diff_verifier: DiffIDVerifier,
        layer: Descriptor,
    ) -> None:
        for piece in writer.existing_pieces():  # type: ignore[attr-defined]
            verifier.update(piece)
            diff_verifier.update(piece)
            self._wrote(layer.digest, len(piece))

    def _index_chunked(self, layer: Descriptor, subject: str, blob: Path) -> None:
        """Record the chunks of a verified converted layer; it is its own pack."""
        try:
            table = read_stored_table(blob, layer.annotations, subject)
        except ChunkedLayerError as error:
            _warn_not_indexed(subject, error)
            return
        self._record(layer, table, subject, blob)

    def _record(
        self,
        layer: Descriptor,
        table: ChunkTable,
        subject: str,
        unchecked_blob: Path | None,
    ) -> None:
        """Index a layer's chunks; a failure only costs later pulls their reuse."""
        try:
            record_layer(self._index, layer, table, subject, unchecked_blob)
        except (ChunkedLayerError, StoreError) as error:
            _warn_not_indexed(subject, error)

    def _download(
        self,
        layer: Descriptor,
        subject: str,
        writer: BlobWriter,
        diff_verifier: DiffIDVerifier,
        stopped: _Cancelled,
        verifier: DigestVerifier,
    ) -> None:
        def write(data: bytes) -> None:
            if self._cancelled.is_set():
                raise stopped
            writer.write(data)
            self._downloaded[layer.digest] += len(data)
            diff_verifier.update(data)
            self._wrote(layer.digest, len(data))

        self._pool.fetch_blob(layer, write, subject, verifier, self._cancelled.is_set)
