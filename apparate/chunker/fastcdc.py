"""FastCDC (the 2020 paper's algorithm, as pyfastcdc implements it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc.cy import FastCDC


class FastCdcChunker:
    """Plain FastCDC over the whole stream, ignoring tar structure."""

    name = "fastcdc"

    # pyfastcdc's defaults, written out because cut points depend on them.
    NORMALIZATION = 1
    SEED = 0

    def __init__(self, average_size: int) -> None:
        self._cutter = FastCDC(
            avg_size=average_size,
            normalized_chunking=self.NORMALIZATION,
            seed=self.SEED,
        )

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        for chunk in self._cutter.cut_stream(stream):
            yield bytes(chunk.data)

    def parameters(self) -> dict[str, int | str]:
        return {
            "algorithm": self.name,
            "min": self._cutter.min_size,
            "avg": self._cutter.avg_size,
            "max": self._cutter.max_size,
            "normalization": self.NORMALIZATION,
            "seed": self.SEED,
        }
