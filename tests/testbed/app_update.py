"""Push an update of the top layer alone, built from the cached samples.

The image contains `base:v1`'s root filesystem layer under `base:v2`'s app
layer: the usual update, a new top layer on an unchanged base. The base
layer is the same blob as in `base:v1`, so a daemon that has `base:v1`
already has it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .ocibuild import LayerBlob, OciLayout, write_image
from .samples import Samples

TAG = "app-update"


def _layout_json(samples: Samples, digest: str) -> Any:
    blob = samples.layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    return json.loads(blob.read_bytes())


def push_app_update(samples: Samples, host: str, workdir: Path) -> str:
    """Push the image to the plain-HTTP registry at ``host``; return its reference."""
    v1, v2 = (_layout_json(samples, samples.images[tag].digest)
              for tag in ("base:v1", "base:v2"))  # fmt: skip
    v1_config = _layout_json(samples, v1["config"]["digest"])
    v2_config = _layout_json(samples, v2["config"]["digest"])
    layout = OciLayout(workdir / TAG)
    layers = []
    for manifest, config, position in ((v1, v1_config, 0), (v2, v2_config, 1)):
        entry = manifest["layers"][position]
        source = samples.layout / "blobs" / "sha256" / entry["digest"].split(":")[1]
        shutil.copyfile(source, layout.blob_path(entry["digest"]))
        diff_id = config["rootfs"]["diff_ids"][position]
        layers.append(LayerBlob(entry["digest"], entry["size"], diff_id, "gzip"))
    manifest = write_image(layout, v1_config, layers)
    layout.write_index_json([(TAG, manifest)])
    reference = f"{host}/samples/base:{TAG}"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"oci:{layout.path}:{TAG}", f"docker://{reference}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return reference
