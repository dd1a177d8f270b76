"""Platforms (``linux/arm64/v8``) and the rule for matching one to an image."""

from __future__ import annotations

import platform as host_platform
import sys
from dataclasses import dataclass

_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
}

# Variant spellings mapped to the one this module compares, as normalizeArch
# in containerd's platforms package (github.com/containerd/platforms) maps
# them. So amd64 v1 and arm64 v8 are the plain architectures, and arm without
# a variant is v7.
_VARIANT_SPELLINGS = {
    ("amd64", "v1"): "",
    ("arm64", "8"): "",
    ("arm64", "v8"): "",
    ("arm64", "v8.0"): "",
    ("arm64", "9"): "v9",
    ("arm64", "9.0"): "v9",
    ("arm64", "v9.0"): "v9",
    ("arm", ""): "v7",
    ("arm", "5"): "v5",
    ("arm", "6"): "v6",
    ("arm", "7"): "v7",
    ("arm", "8"): "v8",
}


@dataclass(frozen=True)
class Platform:
    """An OS, CPU architecture and optional variant, normalised as OCI names them."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``OS/ARCH[/VARIANT]``, raising ValueError when malformed."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(
                f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], "
                "e.g. linux/amd64 or linux/arm/v7"
            )
        variant = parts[2] if len(parts) == 3 else ""
        return cls.normalised(parts[0], parts[1], variant)

    @classmethod
    def normalised(cls, os: str, architecture: str, variant: str = "") -> Platform:
        """Build a platform, mapping kernel names such as aarch64 to OCI names.

        Names are lowercased, as containerd's normalizeArch does, and
        variants are spelled as in ``_VARIANT_SPELLINGS``. So an index entry
        ``linux/amd64/v1`` matches ``linux/amd64``.
        """
        os, architecture = os.lower(), architecture.lower()
        architecture, default_variant = _ARCH_ALIASES.get(
            architecture, (architecture, "")
        )
        variant = variant.lower() or default_variant
        variant = _VARIANT_SPELLINGS.get((architecture, variant), variant)
        return cls(os, architecture, variant)

    @classmethod
    def from_config(cls, config: dict[str, object]) -> Platform | None:
        """Read the platform of an image config, or None without an OS and architecture."""
        os_name = config.get("os")
        architecture = config.get("architecture")
        if not isinstance(os_name, str) or not isinstance(architecture, str):
            return None
        if not os_name or not architecture:
            return None
        variant = config.get("variant")
        return cls.normalised(
            os_name, architecture, variant if isinstance(variant, str) else ""
        )

    @classmethod
    def host(cls) -> Platform:
        """Return the platform of this machine."""
        os_name = "linux" if sys.platform.startswith("linux") else sys.platform
        return cls.normalised(os_name, host_platform.machine().lower())

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def compatible_variants(wanted: Platform) -> list[str]:
    """Variants that can run on ``wanted``, best first.

    An arm v7 machine also runs v6 and v5 images. An amd64 v3 machine runs
    v2 images and plain amd64 ones (which mean v1), as containerd matches.
    """
    lowest = {"arm": 5, "amd64": 1}.get(wanted.architecture)
    if lowest is None or not wanted.variant.startswith("v"):
        return [wanted.variant]
    try:
        level = int(wanted.variant[1:])
    except ValueError:
        return [wanted.variant]
    variants = [f"v{n}" for n in range(level, lowest - 1, -1)]
    if wanted.architecture == "amd64":
        variants = [v for v in variants if v != "v1"] + [""]
    return variants


def match_rank(wanted: Platform, offered: Platform) -> int | None:
    """Rank how well an image platform fits: 0 is exact, None is unusable."""
    if (wanted.os, wanted.architecture) != (offered.os, offered.architecture):
        return None
    variants = compatible_variants(wanted)
    if offered.variant in variants:
        return variants.index(offered.variant)
    return None
