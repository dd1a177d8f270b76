"""The summary a pull returns: what was fetched, what was reused, how long."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apparate.digest import Digest


def saved_bytes(layer_bytes: int, bytes_fetched: int, bytes_resumed: int = 0) -> int:
    """Return the layer bytes a pull neither fetched nor resumed.

    The savings are against pulling every layer whole. A new tag for an
    image whose layers are stored saves all of its layer bytes. A pull that
    found its tag up to date saves nothing, because any client fetches
    nothing then. Bytes kept from an interrupted pull save nothing either,
    because they crossed the network in that pull, which recorded nothing.
    ``apparate pull --json`` and ``apparate stats`` both count savings so.
    """
    return max(layer_bytes - bytes_fetched - bytes_resumed, 0)


@dataclass(frozen=True)
class LayerResult:
    """One layer of a pulled image."""

    digest: Digest
    media_type: str
    size: int
    fetched: bool
    bytes_fetched: int = 0
    # Bytes of the layer that did not cross the network in this pull: all
    # of a stored layer, the frames a rebuilt one copied. Bytes fetched
    # again after a failed attempt do not lower it.
    bytes_reused: int = 0
    # Bytes of the layer that an interrupted pull fetched and left in a
    # partial download, which this pull kept. They are neither fetched in
    # this pull nor reused.
    bytes_resumed: int = 0


@dataclass(frozen=True)
class ImportResult:
    """The outcome of handing a stored image on: target, name and image ID.

    ``target`` is ``docker``, ``containerd``, ``oci`` (the local store only),
    ``docker-archive:FILE`` or ``oci-archive:FILE``. ``requested`` is the
    target the user requested, such as ``auto``. ``name`` is None when the image was
    loaded without a tag, and ``note`` then explains why.
    """

    target: str
    requested: str
    name: str | None
    image_id: str
    bytes_sent: int = 0
    seconds: float = 0.0
    note: str = ""
    # The stored image imported, which ``apparate import`` may have found
    # by a digest prefix.
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "target": self.target,
            "requested": self.requested,
            "name": self.name,
            "image_id": self.image_id,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "note": self.note,
        }


@dataclass(frozen=True)
class PullResult:
    """Summary of one pull, as the CLI prints it and ``--json`` writes it."""

    reference: str
    digest: Digest
    platform: str
    store: str
    index_digest: Digest | None
    layers: list[LayerResult] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    # Bytes each source served, keyed by its URL.
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    # Each warning logged during the pull, once, in order: sources left or
    # dropped, the import, max_store_size.
    warnings: list[str] = field(default_factory=list)
    imported: ImportResult | None = None
    # The reference already named this image, and nothing was fetched.
    up_to_date: bool = False
    # The URL of the mirror that resolved the tag, or None when the registry
    # did or the reference has a digest.
    resolved_by: str | None = None

    @property
    def imported_into(self) -> str | None:
        """The import target used, or None for a dry run."""
        return self.imported.target if self.imported else None

    @property
    def bytes_reused(self) -> int:
        """Layer bytes copied from the store: stored layers, frames a rebuild copied.

        Zero for a pull that found the image up to date, which needed nothing.
        """
        if self.up_to_date:
            return 0
        return sum(layer.bytes_reused for layer in self.layers)

    @property
    def bytes_resumed(self) -> int:
        """Layer bytes kept from an interrupted pull's partial downloads.

        They crossed the network in that pull, so they count as neither
        reused nor saved. Zero for a pull that found the image up to date.
        """
        if self.up_to_date:
            return 0
        return sum(layer.bytes_resumed for layer in self.layers)

    @property
    def layer_bytes(self) -> int:
        """The bytes of the layers, which a pull of every layer whole would fetch.

        Zero for a pull that found the image up to date: any client fetches
        nothing then, so it saved nothing either.
        """
        if self.up_to_date:
            return 0
        # A layer listed twice is one blob, which any client fetches once.
        return sum({layer.digest: layer.size for layer in self.layers}.values())

    @property
    def bytes_saved(self) -> int:
        """Layer bytes neither fetched nor resumed; see saved_bytes."""
        return saved_bytes(self.layer_bytes, self.bytes_fetched, self.bytes_resumed)

    @property
    def layers_fetched(self) -> int:
        return sum(1 for layer in self.layers if layer.fetched)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": str(self.digest),
            "index_digest": str(self.index_digest) if self.index_digest else None,
            "platform": self.platform,
            "dry_run": self.dry_run,
            "up_to_date": self.up_to_date,
            "resolved_by": self.resolved_by,
            "store": self.store,
            "bytes_fetched": self.bytes_fetched,
            "bytes_reused": self.bytes_reused,
            "bytes_resumed": self.bytes_resumed,
            "bytes_saved": self.bytes_saved,
            "sources": dict(self.bytes_by_source),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "imported_into": self.imported_into,
            "import": self.imported.to_dict() if self.imported else None,
            "layers": [
                {
                    "digest": str(layer.digest),
                    "media_type": layer.media_type,
                    "size": layer.size,
                    "fetched": layer.fetched,
                    "bytes_fetched": layer.bytes_fetched,
                    "bytes_reused": layer.bytes_reused,
                    "bytes_resumed": layer.bytes_resumed,
                }
                for layer in self.layers
            ],
        }
