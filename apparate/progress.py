"""Milestones a pull reports while it runs; the CLI renders them, the API may not."""

from __future__ import annotations

from apparate.digest import Digest


class PullObserver:
    """Receives pull milestones; every method does nothing unless overridden.

    Methods may be called from several threads at once, one per layer.
    """

    def resolved(self, image: str, digest: Digest, platform: str) -> None:
        """Report that the reference was resolved to one image manifest."""

    def layer_planned(self, digest: Digest, size: int, stored: bool) -> None:
        """Report a layer of the image; ``stored`` is true when it needs no fetch."""

    def layer_needs(self, digest: Digest, to_fetch: int) -> None:
        """Report that a layer needs ``to_fetch`` more bytes from the network.

        Known once a chunked layer's rebuild is planned, which may fetch much
        less than the layer's size; a layer fetched whole reports its size.
        """

    def layer_progress(self, digest: Digest, received: int) -> None:
        """``received`` more bytes of a layer arrived."""

    def layer_done(self, digest: Digest) -> None:
        """Report that a layer was verified and stored."""
