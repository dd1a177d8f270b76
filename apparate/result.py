"""The summary a pull returns: what was fetched, what was reused, how long."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apparate.digest import Digest


@dataclass(frozen=True)
class LayerResult:
    """One layer of a pulled image."""

    digest: Digest
    media_type: str
    size: int
    fetched: bool
    bytes_fetched: int = 0


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

    @property
    def bytes_reused(self) -> int:
        """Layer bytes that did not cross the network: stored, or rebuilt locally."""
        return sum(max(layer.size - layer.bytes_fetched, 0) for layer in self.layers)

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
            "store": self.store,
            "bytes_fetched": self.bytes_fetched,
            "bytes_reused": self.bytes_reused,
            "seconds": round(self.seconds, 3),
            "layers": [
                {
                    "digest": str(layer.digest),
                    "media_type": layer.media_type,
                    "size": layer.size,
                    "fetched": layer.fetched,
                    "bytes_fetched": layer.bytes_fetched,
                }
                for layer in self.layers
            ],
        }
