"""Plain-text pull output: one line per milestone, and the summary line."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from apparate.progress import PullObserver
from apparate.store.gc import IMAGE, PACK, UNREFERENCED, binary_size, scaled_size

if TYPE_CHECKING:
    # Only annotations name these, so a command loads only the modules it runs.
    from apparate.catalog import ImageSummary
    from apparate.convert import ConvertResult, LayerConversion
    from apparate.digest import Digest
    from apparate.result import ImportResult, PullResult
    from apparate.sources.selection import SourceFigures
    from apparate.store.collector import GcResult
    from apparate.store.history import PullRecord, Totals


def short(digest: Digest) -> str:
    return digest.hex[:12]


def human_size(size: float) -> str:
    """Format bytes sent over the network in SI units (1 MB is 1000 kB), as curl does."""
    return scaled_size(size, 1000, ("B", "kB", "MB", "GB"))


def counted(count: int, noun: str) -> str:
    """Format a count with its noun, in the plural unless it is one."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class LineObserver(PullObserver):
    """One line per milestone, for output that is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)

    def resolved(self, image: str, digest: Digest, platform: str) -> None:
        self._say(f"{image}: resolved to {digest} ({platform})")

    def layer_planned(self, digest: Digest, size: int, stored: bool) -> None:
        state = "already stored" if stored else "missing, fetching what is needed"
        self._say(f"{short(digest)}: {state} ({human_size(size)})")

    def layer_needs(self, digest: Digest, to_fetch: int) -> None:
        self._say(f"{short(digest)}: fetching {human_size(to_fetch)}")

    def layer_done(self, digest: Digest) -> None:
        self._say(f"{short(digest)}: verified")


def summary_line(result: PullResult) -> str:
    """Format one sentence stating what the pull fetched and reused."""
    if result.up_to_date:
        return (
            f"{result.reference}: already up to date in the store, nothing "
            f"fetched, {result.seconds:.1f} s; {_digests(result)}"
        )
    fetched = f"fetched {human_size(result.bytes_fetched)}"
    if result.bytes_resumed:
        fetched += (
            f" and resumed {human_size(result.bytes_resumed)} kept from an "
            "interrupted pull"
        )
    saved = ""
    if result.bytes_saved:
        # The saving excludes the resumed bytes as well as the fetched ones.
        together = "together " if result.bytes_resumed else ""
        saved = f" ({together}{human_size(result.bytes_saved)} less than whole layers)"
    return (
        f"{result.reference}: {fetched}{saved}, "
        f"reused {human_size(result.bytes_reused)} of local chunks and layers "
        f"({result.layers_fetched} of {len(result.layers)} layers were missing), "
        f"{result.seconds:.1f} s; {_digests(result)}"
    )


def _digests(result: PullResult) -> str:
    """Format the image's digest, and the index it was picked from, if any.

    ``images`` and ``docker pull`` show the index's digest for such an image,
    so the summary names both.
    """
    if result.index_digest is None:
        return f"digest {result.digest}"
    return f"digest {result.digest} ({result.platform} of index {result.index_digest})"


def sources_line(result: PullResult) -> str | None:
    """Format the bytes each source served, or None when nothing was fetched."""
    if not result.bytes_by_source:
        return None
    parts = [
        f"{url} {human_size(count)}" for url, count in result.bytes_by_source.items()
    ]
    return "  from " + ", ".join(parts)


def resolver_line(result: PullResult) -> str | None:
    """Format which mirror resolved the tag, or None when the registry did.

    A mirror may lag behind the registry, and then serves an older image
    under the tag: this line is where that shows.
    """
    if result.resolved_by is None:
        return None
    return f"  tag resolved by mirror {result.resolved_by}, not by the registry"


def sources_report(rows: list[SourceFigures]) -> str:
    """Format the ranked sources of an image with their measured figures."""
    table = [
        [
            str(row.rank),
            row.url,
            _source_role(row),
            "unreachable" if row.rtt is None else f"{row.rtt * 1000:.1f} ms",
            "-" if row.throughput is None else f"{human_size(int(row.throughput))}/s",
            row.configured_in,
        ]
        for row in rows
    ]
    headers = ["RANK", "SOURCE", "ROLE", "ROUND TRIP", "THROUGHPUT", "FROM"]
    return format_table(headers, table)


def _source_role(row: SourceFigures) -> str:
    """Return a source's role and, for a mirror, whether it resolves tags.

    A mirror that did not respond to the probe resolves no tag in a pull.
    """
    if row.role != "mirror" or not row.resolve:
        return row.role
    if row.rtt is None:
        return f"{row.role}, resolves tags when reachable"
    return f"{row.role}, resolves tags"


def import_line(imported: ImportResult) -> str:
    """Format where an image was imported, under which name, and why untagged."""
    target = imported.target
    if imported.requested == "auto":
        target += " (detected by auto)"
    if imported.target == "oci":
        return f"not imported, target {target}: {imported.note}"
    verb = "written to" if ":" in imported.target else "imported into"
    name = f"as {imported.name}" if imported.name else "without a name"
    line = f"{verb} {target} {name}, ID {imported.image_id}"
    if imported.bytes_sent:
        line += f", {human_size(imported.bytes_sent)} sent in {imported.seconds:.1f} s"
    return f"{line}; {imported.note}" if imported.note else line


def dry_run_report(result: PullResult) -> str:
    """Format what a pull would fetch and reuse, layer by layer.

    The bytes it would resume get a column only when there are some.
    """
    resuming = result.bytes_resumed > 0
    header = ["LAYER", "SIZE", "FETCH", *(["RESUME"] if resuming else []), "REUSE", ""]
    rows = [
        [
            short(layer.digest),
            human_size(layer.size),
            human_size(layer.bytes_fetched),
            *([human_size(layer.bytes_resumed)] if resuming else []),
            human_size(layer.bytes_reused),
            "stored" if not layer.fetched else "",
        ]
        for layer in result.layers
    ]
    table = format_table(header, rows)
    if result.up_to_date:
        total = (
            f"{result.reference}: already up to date in the store, would fetch nothing"
        )
    else:
        resumed = ""
        if resuming:
            resumed = (
                f", resume {human_size(result.bytes_resumed)} kept from an "
                "interrupted pull"
            )
        total = (
            f"{result.reference}: would fetch {human_size(result.bytes_fetched)}"
            f"{resumed}, reuse {human_size(result.bytes_reused)}"
        )
    resolver = resolver_line(result)
    return f"{table}\n{total}" + (f"\n{resolver}" if resolver else "")


def stats_report(totals: Totals, records: list[PullRecord]) -> str:
    """Format the pull history: a table of recent pulls and the totals.

    The bytes kept from interrupted pulls get a column only when there are
    some.
    """
    resuming = totals.bytes_resumed > 0
    rows = []
    for record in records:
        when = datetime.fromtimestamp(record.finished, UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        # A pull that fetched nothing has no speed: "0 B/s" would read as a stall.
        speed = "-"
        if record.bytes_fetched and record.seconds:
            speed = f"{human_size(record.bytes_fetched / record.seconds)}/s"
        rows.append(
            [
                when,
                record.reference,
                human_size(record.bytes_fetched),
                *([human_size(record.bytes_resumed)] if resuming else []),
                human_size(record.bytes_reused),
                f"{record.seconds:.1f}",
                speed,
            ]
        )
    header = [
        "FINISHED (UTC)", "REFERENCE", "FETCHED", *(["RESUMED"] if resuming else []),
        "REUSED", "SECONDS", "SPEED",
    ]  # fmt: skip
    saved = totals.bytes_saved / totals.layer_bytes if totals.layer_bytes else 0.0
    resumed = ""
    if resuming:
        resumed = (
            f", resumed {human_size(totals.bytes_resumed)} kept from interrupted pulls"
        )
    summary = (
        f"{counted(totals.pulls, 'pull')}: fetched {human_size(totals.bytes_fetched)} of "
        f"{human_size(totals.layer_bytes)} of layers{resumed}, saved "
        f"{human_size(totals.bytes_saved)} ({saved:.0%}), {totals.seconds:.1f} s"
    )
    return f"{format_table(header, rows)}\n{summary}"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Align columns with two spaces between them, as ``docker images`` does."""
    widths = [max(len(row[n]) for row in [header, *rows]) for n in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def ago(when: float, now: float | None = None) -> str:
    """Say how long ago ``when`` (seconds since the epoch) was, roughly."""
    seconds = max((time.time() if now is None else now) - when, 0.0)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def images_report(images: list[ImageSummary], now: float | None = None) -> str:
    """Format the stored images as a table, as ``docker images --digests`` does.

    The DIGEST column shows the digest the reference names at the registry,
    so an image picked from an index shows the index's, as docker and ctr do.
    PLATFORM then shows which of the index's images is stored, as ctr's
    PLATFORMS column does.
    """
    rows = [
        [
            image.reference,
            str(image.reference_digest)[:19],
            image.platform or "-",
            _size_column(image),
            ago(image.last_used, now) if image.last_used else "-",
        ]
        for image in images
    ]
    header = ["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "LAST USED"]
    return format_table(header, rows)


def _size_column(image: ImageSummary) -> str:
    if image.size is None:
        return "damaged"
    if not image.complete:
        return f"{human_size(image.size)} (incomplete)"
    return human_size(image.size)


def gc_report(result: GcResult) -> str:
    """Format what a gc or rm removed, and the bytes it freed."""
    verb = "would remove" if result.dry_run else "removed"
    untag = "would untag" if result.dry_run else "untagged"
    lines = [f"{untag}: {reference}" for reference in result.untagged]

    kinds = {
        IMAGE: ("blob", "of removed images"),
        PACK: ("local pack", ""),
        UNREFERENCED: ("blob", "no image needs"),
    }
    for reason, (noun, detail) in kinds.items():
        count = sum(1 for item in result.removed if item.reason == reason)
        if count:
            removed = " ".join(filter(None, [counted(count, noun), detail]))
            size = binary_size(result.bytes_of(reason))
            lines.append(f"{verb} {removed} ({size})")
    if result.partial_files:
        partials = counted(len(result.partial_files), "partial download")
        lines.append(f"{verb} {partials} ({binary_size(result.partial_bytes)})")

    freed = "would free" if result.dry_run else "freed"
    limit = ""
    if result.limit is not None:
        limit = f" (limit {binary_size(result.limit)})"
    size_verb = "would hold" if result.dry_run else "holds"
    lines.append(
        f"{freed} {binary_size(result.bytes_freed)}; the store {size_verb} "
        f"{binary_size(result.size_after)}{limit}"
    )
    if result.over_limit_because:
        lines.append(
            "still over the limit because these images cannot be removed: "
            + ", ".join(result.over_limit_because)
        )
    return "\n".join(lines)


def convert_line(result: ConvertResult) -> str:
    """Format one sentence stating what a conversion pushed and reused."""
    reused = sum(layer.frames_reused for layer in result.layers)
    return (
        f"{result.destination}: {result.digest}, "
        f"{counted(len(result.layers), 'layer')}, "
        f"{human_size(result.bytes_pushed)} pushed, "
        f"{counted(result.blobs_mounted, 'blob')} mounted, "
        f"{counted(reused, 'frame')} reused, {result.seconds:.1f} s"
    )


def conversion_line(layer: LayerConversion) -> str:
    """Format what the conversion of one layer wrote and reused."""
    return (
        f"{short(layer.source)}: converted to {short(layer.converted)}, "
        f"{human_size(layer.source_size)} to {human_size(layer.converted_size)}, "
        f"{layer.frames_reused} of {counted(layer.chunks, 'frame')} reused"
    )
