"""Importers: hand a stored image to docker, containerd or an archive file.

``target`` parses ``--into`` and picks the target of ``auto``. ``archive``
streams docker- and oci-archives from the store, and ``docker`` and
``containerd`` send them to the daemons. ``run`` ties these together for
``apparate import`` and the end of a pull.
"""

from apparate.importers.run import ImportOptions, import_image, import_stored
from apparate.importers.target import Daemons, ImportTarget, parse_target

__all__ = [
    "Daemons",
    "ImportOptions",
    "ImportTarget",
    "import_image",
    "import_stored",
    "parse_target",
]
