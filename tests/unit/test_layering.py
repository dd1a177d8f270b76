"""The library stays free of CLI dependencies, so API users do not pay for them."""

import subprocess
import sys


def test_core_does_not_import_cli_packages():
    code = (
        "import sys, apparate, apparate.pulling, apparate.catalog;"
        "print(' '.join(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == ""


def test_plain_output_does_not_import_rich():
    code = (
        "import sys, apparate.cli.main, apparate.cli.text;print('rich' in sys.modules)"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == "False"


def test_cli_loads_no_registry_client():
    # An import into containerd or a file needs none of these, and httpx
    # alone takes about 0.07 s to load.
    heavy = (
        "httpx",
        "apparate.registry.client",
        "apparate.pulling",
        "apparate.convert",
    )
    code = (
        "import sys, apparate.cli.main, apparate.config, apparate.importers.run;"
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == ""
