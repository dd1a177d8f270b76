"""Content digests (``sha256:<hex>``) and a hasher that checks one."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from apparate.errors import DigestMismatch, TruncatedBody

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)", re.ASCII)


@dataclass(frozen=True, order=True)
class Digest:
    """A content digest such as ``sha256:9f86d0...``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``ALGORITHM:HEX``, raising ValueError for anything else."""
        match = _DIGEST.fullmatch(text)
        if not match:
            raise ValueError(f"invalid digest {text!r}")
        algorithm, hex_part = match.groups()
        expected_length = _HEX_LENGTH.get(algorithm)
        if expected_length is None:
            raise ValueError(f"unsupported digest algorithm {algorithm!r} in {text!r}")
        if len(hex_part) != expected_length or not re.fullmatch(
            r"[0-9a-f]+", hex_part, re.ASCII
        ):
            raise ValueError(
                f"invalid {algorithm} digest {text!r}: "
                f"expected {expected_length} lowercase hex digits"
            )
        return cls(algorithm, hex_part)

    @classmethod
    def parse_or_none(cls, value: object) -> Digest | None:
        """Parse ``value`` if it is a valid digest string; return None otherwise."""
        if not isinstance(value, str):
            return None
        try:
            return cls.parse(value)
        except ValueError:
            return None

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def matches(self, data: bytes) -> bool:
        """Tell whether ``data`` has this digest."""
        return Digest.of(data, self.algorithm) == self

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class DigestVerifier:
    """Hash bytes as they stream by and check them against an expected digest.

    ``subject`` names what is hashed (``layer sha256:ab.. of IMAGE``) and
    ``source`` where it came from, so a mismatch names both.
    """

    def __init__(
        self, expected: Digest, subject: str, source: str, size: int | None = None
    ) -> None:
        self.expected = expected
        self.subject = subject
        self.source = source
        self.size = size
        self.bytes_read = 0
        self._hash = hashlib.new(expected.algorithm)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.bytes_read += len(chunk)

    def copy_state_from(self, other: DigestVerifier) -> None:
        """Continue from another verifier's state, as when resuming a download."""
        self._hash = other._hash.copy()
        self.bytes_read = other.bytes_read

    def actual(self) -> Digest:
        return Digest(self.expected.algorithm, self._hash.hexdigest())

    def verify(self) -> None:
        """Raise unless the bytes seen have the expected size and digest."""
        if self.size is not None and self.bytes_read < self.size:
            raise TruncatedBody(
                f"{self.subject} from {self.source} ended after "
                f"{self.bytes_read} of {self.size} bytes"
            )
        if self.size is not None and self.bytes_read > self.size:
            raise DigestMismatch(
                f"{self.subject} from {self.source} is {self.bytes_read} bytes, "
                f"but its descriptor says {self.size}"
            )
        actual = self.actual()
        if actual != self.expected:
            raise DigestMismatch(
                f"{self.subject} from {self.source} failed verification: "
                f"{self.expected.algorithm} of {self.bytes_read} bytes is {actual}, "
                f"expected {self.expected}"
            )


def verify_bytes(data: bytes, expected: Digest, subject: str, source: str) -> None:
    """Check a complete body against its digest."""
    verifier = DigestVerifier(expected, subject, source)
    verifier.update(data)
    verifier.verify()
