"""What a pull reports while it runs; the CLI renders it, the API may ignore it."""

from __future__ import annotations

from apparate.digest import Digest


class PullObserver:
    """Receives pull milestones; every method does nothing unless overridden.

    Methods may be called from several threads at once, one per layer.
    """

    def resolved(self, image: str, digest: Digest, platform: str) -> None:
        """The reference was resolved to one image manifest."""

    def layer_planned(self, digest: Digest, size: int, stored: bool) -> None:
        """A layer is part of the image; ``stored`` when it needs no fetch."""

    def layer_progress(self, digest: Digest, received: int) -> None:
        """``received`` more bytes of a layer arrived."""

    def layer_done(self, digest: Digest) -> None:
        """A layer was verified and stored."""
