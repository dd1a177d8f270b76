"""apparate: pull container images, fetching only what this machine lacks.

The Python API the CLI wraps::

    import apparate
    result = apparate.pull("registry.example.com/team/app:v2")
    print(result.bytes_fetched, result.digest)

The names below are imported on first use, so that the command line starts
without loading the whole package before it can handle Ctrl-C.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from apparate.catalog import ImageSummary, list_images
    from apparate.errors import ApparateError
    from apparate.pulling import PullOptions, pull
    from apparate.reference import Reference
    from apparate.result import LayerResult, PullResult

# Each public name and the module that defines it.
_MODULES = {
    "ApparateError": "apparate.errors",
    "ImageSummary": "apparate.catalog",
    "LayerResult": "apparate.result",
    "PullOptions": "apparate.pulling",
    "PullResult": "apparate.result",
    "Reference": "apparate.reference",
    "list_images": "apparate.catalog",
    "pull": "apparate.pulling",
}

__all__ = [
    "ApparateError",
    "ImageSummary",
    "LayerResult",
    "PullOptions",
    "PullResult",
    "Reference",
    "__version__",
    "list_images",
    "pull",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'apparate' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value
