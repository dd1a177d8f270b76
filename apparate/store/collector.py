"""``apparate gc`` and ``apparate rm``: carry out gc's plan on the store.

gc locks the store exclusively (``Store.exclusive``), so no pull is between
storing a blob and tagging it. It first deletes the files that no tagged
image needs, which makes room on a full disk, then untags, then deletes the
blobs of the untagged images, and last deletes the database rows of every
removed blob in one transaction. So a gc killed at any point leaves every
kept image whole. At worst it leaves blobs that nothing references, or rows
of blobs that are gone, which the next gc removes. Until then a pull that
looks up such a row finds no blob and fetches the chunk instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apparate.digest import Digest
from apparate.errors import ApparateError, NotFound, StoreError
from apparate.reference import Reference
from apparate.result import PullResult
from apparate.store.chunk_index import INDEX_FILE
from apparate.store.gc import (
    GcPlan,
    PartialEntry,
    Removal,
    StoreState,
    binary_size,
    needed,
    plan_gc,
)
from apparate.store.layout import (
    Store,
    default_store_path,
    journal_of,
    not_created,
)
from apparate.store.packs import pack_sources
from apparate.store.selection import (
    select_by_bare_digest,
    select_by_digest,
    select_images,
)
from apparate.store.survey import Survey, survey
from apparate.store.usage import forget_uses, mark_used

log = logging.getLogger(__name__)
# The operating system's errors for a full disk or an exhausted quota.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

DEFAULT_WAIT = 60.0
# A pull that finishes while another runs does not wait for it: the other
# pull applies the limit when it finishes.
AFTER_PULL_WAIT = 2.0
PARTIAL_MAX_AGE = 24 * 3600.0


@dataclass
class GcOptions:
    """Settings of a gc that the CLI builds from flags and config.toml."""

    max_size: int | None = None
    # References never removed, such as the image the running command pulled.
    protected: Sequence[str] = ()
    dry_run: bool = False
    # Seconds to wait for running pulls to close the store.
    wait: float = DEFAULT_WAIT
    # Age after which a resumable partial download is deleted. Younger ones
    # are deleted only to fit a size limit that removing images did not meet.
    partial_max_age: float = PARTIAL_MAX_AGE


@dataclass(frozen=True)
class GcResult:
    """Outcome of a gc or rm: what it removed, or would remove in a dry run.

    ``not_found`` lists the references an rm was given that name no stored
    image; the others were removed all the same.
    """

    store: str
    untagged: list[str]
    removed: list[Removal]
    partial_files: list[str]
    partial_bytes: int
    size_before: int
    size_after: int
    limit: int | None
    over_limit_because: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    not_found: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return self.size_before - self.size_after

    def bytes_of(self, reason: str) -> int:
        return sum(item.size for item in self.removed if item.reason == reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "dry_run": self.dry_run,
            "untagged": self.untagged,
            "removed": [
                {"digest": str(item.digest), "size": item.size, "reason": item.reason}
                for item in self.removed
            ],
            "partial_files": self.partial_files,
            "partial_bytes": self.partial_bytes,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "bytes_freed": self.bytes_freed,
            "limit": self.limit,
            "over_limit_because": self.over_limit_because,
            "not_found": self.not_found,
            "seconds": round(self.seconds, 3),
        }


def collect_garbage(
    store_path: Path | None = None, options: GcOptions | None = None
) -> GcResult:
    """Remove what no kept image needs; with ``max_size``, fit the store to it.

    A store not created yet, by a first pull, has nothing to remove.
    """
    root = store_path or default_store_path()
    options = options or GcOptions()
    if not_created(root):
        return GcResult(
            str(root), [], [], [], 0, 0, 0, options.max_size,
            dry_run=options.dry_run,
        )  # fmt: skip
    store = Store(root, create=False)
    if not options.dry_run:
        store.check_writable()
    return collect(store, options)


def remove_images(
    references: Iterable[str],
    store_path: Path | None = None,
    options: GcOptions | None = None,
) -> GcResult:
    """Untag images, then remove the blobs no other kept image needs.

    A reference may also be a manifest or index digest or a prefix of it,
    as ``select_by_digest`` reads it, or such a prefix without ``sha256:``
    that names no image. References that name no stored image are
    listed in the result's ``not_found``, as ``docker rmi`` reports them
    while removing the others.
    Raises NotFound, removing nothing, if none of them is stored.
    """
    root = store_path or default_store_path()
    requested = list(references)
    if not (root / "index.json").is_file():
        raise _not_stored(requested, root)
    options = options or GcOptions()
    store = Store(root, create=False)
    if not options.dry_run:
        store.check_writable()
    # An invalid entry tagged with a requested name is removed with the
    # images rm untags. Any other invalid entry stops gc, so entries() stops
    # rm here, before images() warns about it.
    names = {text: _names_of(text) for text in requested}
    hidden = store.hide_invalid(name for both in names.values() for name in both)
    store.entries()
    stored = store.images()
    untag: list[str] = []
    not_found: list[str] = []
    for text in requested:
        matched = (
            select_images(text, stored)
            or select_by_digest(text, stored)
            or select_by_bare_digest(text, stored)
        )
        if not matched and not set(names[text]) & set(hidden):
            not_found.append(text)
        untag.extend(ref for ref in matched if ref not in untag)
    if not untag and not hidden:
        raise _not_stored(not_found, root)
    result = collect(store, options, untag)
    return dataclasses.replace(result, not_found=not_found)


def _names_of(text: str) -> tuple[str, ...]:
    """Return the names an rm argument may be stored under: as given, and canonical."""
    try:
        return (text, str(Reference.parse(text)))
    except ApparateError:
        return (text,)


def collect(store: Store, options: GcOptions, untag: Sequence[str] = ()) -> GcResult:
    """Plan and carry out a gc of an open store; see the module docstring."""
    started = time.monotonic()
    if not options.dry_run:
        _forget_invalid_rows(store.root / INDEX_FILE)
    # Reading packs may decompress new ones, so it happens before the store
    # is locked exclusively. The second call reads what the first cached and
    # picks up packs that pulls wrote meanwhile, which a dry run must not
    # report as blobs no image needs either.
    packs = _read_packs(store, options.dry_run)
    with store.exclusive(options.wait):
        if packs is not None:
            packs = _read_packs(store, options.dry_run)
        found = survey(store, packs or {}, options.partial_max_age)
        plan = plan_gc(found.state, options.max_size, options.protected, untag)
        # Invalid entries rm hid are untagged with the images it names.
        extra = [ref for ref in store.hidden_references if ref not in plan.untag]
        plan = dataclasses.replace(plan, untag=(*plan.untag, *extra))
        found.check_kept_images_readable(plan.untag)
        if not options.dry_run:
            _apply(store, plan, found)
    result = _result(store, plan, found, options.dry_run, started)
    log.info(
        "%s: gc removed %d images and %d blobs, freed %d bytes",
        store.root, len(plan.untag), len(plan.remove), result.bytes_freed,
    )  # fmt: skip
    return result


def _read_packs(store: Store, dry_run: bool) -> dict[Digest, Digest | None] | None:
    """Read the store's packs, or return None on a full disk, where they cannot be read.

    On a full disk SQLite cannot even open the database, because it creates
    the shared-memory file of its write-ahead log. gc then treats packs as
    blobs no image needs: they only speed up later pulls, and removing them
    frees space. A dry run on a store this process cannot write, such as a
    read-only mount, reads them read-only. Any other failure, such as a
    database locked too long, is raised, so no pack is removed for it.
    """
    read_only = dry_run and not os.access(store.root, os.W_OK)
    try:
        return pack_sources(store, read_only)
    except StoreError as error:
        if not _disk_full(store.root):
            raise
        log.warning(
            "%s; the disk is full, so packs are removed as blobs no image needs",
            error.message,
        )
        return None


def _disk_full(root: Path) -> bool:
    """Tell whether the file system of ``root`` has less than a MiB free.

    NOTE: statvfs does not see a user's exhausted quota, which ``_untag``
    recognises by EDQUOT, so such a store counts as not full here.
    """
    try:
        stats = os.statvfs(root)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1024 * 1024


def after_pull(store: Store, result: PullResult, limit: int | None) -> None:
    """Mark a pulled image used, fit the store to ``limit`` bytes, close it.

    ``limit`` is ``max_store_size`` from config.toml. The image is tagged by
    now, so the store is closed: a gc in another process need not wait for
    this one to let go of it. Neither step may fail the pull that just
    succeeded, so failures are logged.
    """
    try:
        _mark_and_fit(store, result, limit)
    finally:
        store.close()


def _mark_and_fit(store: Store, result: PullResult, limit: int | None) -> None:
    try:
        mark_used(store.root, result.reference)
    except StoreError as error:
        log.warning("%s: last use not recorded: %s", result.reference, error)
    fit_to_limit(store, limit, (result.reference,), result.reference)


def fit_to_limit(
    store: Store, limit: int | None, keep: tuple[str, ...], subject: str
) -> None:
    """Remove least recently used images until the store fits ``limit`` bytes.

    The images named in ``keep`` stay. A failure is logged, not raised,
    since the work that filled the store has succeeded.
    """
    if limit is None:
        return
    try:
        options = GcOptions(limit, keep, wait=AFTER_PULL_WAIT)
        done = collect(store, options)
    except (ApparateError, OSError) as error:
        log.warning("%s: store not fitted to max_store_size: %s", subject, error)
        return
    if done.untagged:
        # Removing images the user did not name deserves a word on stderr.
        log.warning(
            "removed %s from the store to fit max_store_size: %s",
            "an image" if len(done.untagged) == 1 else f"{len(done.untagged)} images",
            ", ".join(done.untagged),
        )
    if done.over_limit_because:
        # Only a pull keeps images: the one it just pulled.
        log.warning(
            "the store holds %s, over max_store_size (%s), because the image "
            "just pulled is never removed: %s", binary_size(done.size_after),
            binary_size(limit), ", ".join(done.over_limit_because),
        )  # fmt: skip


def _apply(store: Store, plan: GcPlan, found: Survey) -> None:
    """Delete files, untag, then forget database rows; see the module docstring.

    A failure to update the database comes after the files are gone, so it
    is logged rather than raised: the space is freed either way.
    """
    state = found.state
    removed = {item.digest for item in plan.remove}
    # Packs of the images still tagged are needed too. Deleted before the
    # untag, they would be lost when the untag fails or is killed, so delta
    # pulls could no longer reuse the chunks of images that stay.
    needed_now = needed(state, list(state.images), set(state.sizes))
    for path in found.stale:
        with _deleting(str(path)):
            path.unlink(missing_ok=True)
    for partial in plan.remove_partials:
        _delete_partial(store, partial)
    _delete_blobs(store, removed - needed_now)
    _untag(store, plan, state, removed & needed_now)
    _delete_blobs(store, removed & needed_now)
    try:
        _forget(store, set(state.sizes) - removed, removed, plan.untag)
    except StoreError as error:
        log.warning("%s; the next gc deletes those rows", error.message)


def _untag(store: Store, plan: GcPlan, state: StoreState, blobs: set[Digest]) -> None:
    """Untag the planned images, deleting their blobs first if the disk is full.

    Untagging rewrites index.json, which needs free space. When that fails
    because the disk is full, every blob of the untagged images but their
    manifests goes first, so their entries still name a stored manifest.
    Any other failure is raised as it is.

    NOTE: a gc killed between that delete and the untag leaves those images
    tagged without their layers; pulling them again or rm repairs them.
    """
    try:
        store.untag(plan.untag)
        return
    except StoreError as error:
        if not plan.untag or error.errno not in _DISK_FULL:
            raise
        log.warning("%s; deleting their layers first to make room", error.message)
    manifests = {
        image.manifest for image in state.images if image.reference in plan.untag
    }
    _delete_blobs(store, blobs - manifests)
    store.untag(plan.untag)


def _delete_blobs(store: Store, digests: set[Digest]) -> None:
    for digest in sorted(digests, key=str):
        with _deleting(f"blob {digest}"):
            store.blob_path(digest).unlink(missing_ok=True)


def _delete_partial(store: Store, partial: PartialEntry) -> None:
    """Delete a resumable download and its journal, unless a pull has it locked."""
    path = store.ingest_dir / partial.name
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, after the unlink
    except FileNotFoundError:
        return
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: kept because a running pull has it locked", path)
            return
        with _deleting(str(path)):
            path.unlink(missing_ok=True)
            journal_of(path).unlink(missing_ok=True)


def _forget(
    store: Store, present: set[Digest], removed: set[Digest], untagged: Iterable[str]
) -> None:
    """Delete, in one transaction, the rows about blobs and images now gone.

    Chunk rows of blobs that are not on disk (left by an earlier crash or a
    failed update) go too, so no look-up points at a missing blob.
    """
    path = store.root / INDEX_FILE
    if not path.exists():
        return
    try:
        db = sqlite3.connect(path, timeout=30.0)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from None
    try:
        with db:
            kept = {str(blob) for blob in present}
            absent = {blob for blob in _indexed(db) if blob not in kept}
            absent |= {str(blob) for blob in removed}
            rows = [(blob,) for blob in sorted(absent, key=repr)]
            _execute(db, "DELETE FROM chunks WHERE blob = ?", rows)
            _execute(db, "DELETE FROM pack_sources WHERE pack = ?", rows)
            forget_uses(db, untagged)
    except sqlite3.Error as error:
        raise StoreError(f"cannot update {path}: {error}") from None
    finally:
        db.close()


def _indexed(db: sqlite3.Connection) -> set[object]:
    """Return the blob column of every chunk row as stored, digests or not.

    The values are kept as SQLite returns them (text, bytes, numbers), so a
    DELETE by value matches the row.
    """
    try:
        rows = db.execute("SELECT DISTINCT blob FROM chunks").fetchall()
    except sqlite3.OperationalError:
        return set()
    return {row[0] for row in rows}


def _forget_invalid_rows(path: Path) -> None:
    """Delete chunk rows whose blob is not a digest, with one warning.

    Reading the packs parses every pack row, so this goes first. Nothing
    depends on it, so a failure is only logged.
    """
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as db, db:
            invalid = [
                (blob,) for blob in _indexed(db) if Digest.parse_or_none(blob) is None
            ]
            if invalid:
                log.warning(
                    "%s: %d chunk rows name no blob digest, such as %r; "
                    "they are deleted", path, len(invalid), invalid[0][0],
                )  # fmt: skip
                db.executemany("DELETE FROM chunks WHERE blob = ?", invalid)
    except sqlite3.Error as error:
        log.warning("cannot delete invalid chunk rows from %s: %s", path, error)


def _execute(db: sqlite3.Connection, sql: str, rows: list[tuple[object]]) -> None:
    """Run a statement for each row; a table that does not exist has no rows."""
    try:
        db.executemany(sql, rows)
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise


@contextlib.contextmanager
def _deleting(subject: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise StoreError(f"cannot delete {subject}: {error.strerror}") from None


def _result(
    store: Store, plan: GcPlan, found: Survey, dry_run: bool, started: float
) -> GcResult:
    partials = [path.name for path in found.stale]
    partials += [partial.name for partial in plan.remove_partials]
    partial_bytes = found.stale_bytes + sum(p.size for p in plan.remove_partials)
    return GcResult(
        store=str(store.root),
        untagged=list(plan.untag),
        removed=list(plan.remove),
        partial_files=partials,
        partial_bytes=partial_bytes,
        size_before=plan.size_before + found.stale_bytes,
        size_after=plan.size_after,
        limit=plan.limit,
        over_limit_because=list(plan.blocked_by),
        dry_run=dry_run,
        seconds=time.monotonic() - started,
    )


def _not_stored(references: list[str], root: Path) -> NotFound:
    return NotFound(
        f"{', '.join(references)}: no such image in the store {root}",
        hint="'apparate images' lists the stored images",
    )
