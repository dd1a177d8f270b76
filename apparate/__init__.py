"""apparate: pull container images, fetching only what this machine lacks.

The Python API the CLI wraps::

    import apparate
    result = apparate.pull("registry.example.com/team/app:v2")
    print(result.bytes_fetched, result.digest)
"""

__version__ = "0.1.0"

from apparate.catalog import ImageSummary, list_images
from apparate.errors import ApparateError
from apparate.pull import PullOptions, pull
from apparate.reference import Reference
from apparate.result import LayerResult, PullResult

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
