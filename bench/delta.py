"""Time an update pull (v1 held, v2 wanted) with apparate and with skopeo.

The sample images are converted once into a test-bed registry, at zstd
level 3 (the default) and 19 (smaller frames, slower to convert). Then, on
loopback and across a shaped link (see ``bench.link``: two network
namespaces, ``tbf`` at 100 Mbit/s and a 20 ms round-trip delay proxy),
apparate pulls converted v2 into a store that contains converted v1, and
skopeo copies the original v2 into an empty OCI layout (a full pull) and
into a layout that contains v1 (reusing layers, as docker does). A cold pull
of converted v2 into an empty store is timed too. For reference, the bytes
``casync extract --seed`` needs to rebuild the v2 layer tars from the v1
ones are counted (``bench.casync_delta``).

Bytes fetched are apparate's own count (chunk tables included) and, for
skopeo, the blobs it wrote that were not in the layout before. On the
shaped link the delay proxy also counts the bytes it sent to the client,
headers and manifests included. Every pull is a fresh process, timed from
start to exit, with its peak RSS. Run it through ``scripts/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from apparate.convert import ConvertOptions, convert
from bench import casync_delta, link
from bench.delta_report import (
    LOOPBACK,
    SHAPED,
    SKOPEO_FULL,
    SKOPEO_REUSE,
    Link,
    Result,
    cold_name,
    print_report,
    update_name,
)
from tests.testbed.registry import start_registry

APPARATE = str(Path(sys.executable).with_name("apparate"))
# zstd levels the samples are converted at: the default, and the smallest
# frames, for an image converted once and pulled many times.
LEVELS = (3, 19)
GNU_TIME = "/usr/bin/time"


class Puller:
    """Runs apparate and skopeo against one registry host, measuring each run.

    ``prefix`` puts each command into another network namespace; ``proxy``,
    when given, is asked for the bytes it forwarded around each timed run.
    """

    def __init__(
        self,
        host: str,
        prefix: list[str],
        proxy: link.DelayProxy | None,
        env: dict[str, str],
    ) -> None:
        self.host = host
        self.prefix = prefix
        self.proxy = proxy
        self.env = env

    def apparate(self, reference: str, store: Path) -> tuple[int, int]:
        """Pull with apparate; return the bytes it fetched and its peak RSS."""
        argv = [APPARATE, "pull", "--json", "--store", str(store), reference]
        output, peak_rss = self.run(argv)
        return int(json.loads(output)["bytes_fetched"]), peak_rss

    def skopeo(self, reference: str, layout: Path) -> tuple[int, int]:
        """Copy into ``layout``; return the bytes of blobs it did not contain."""
        before = blob_names(layout)
        _, peak_rss = self.run(
            ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
             f"docker://{reference}", f"oci:{layout}:{reference}"]
        )  # fmt: skip
        added = blob_names(layout) - before
        folder = layout / "blobs" / "sha256"
        return sum((folder / name).stat().st_size for name in added), peak_rss

    def run(self, argv: list[str]) -> tuple[str, int]:
        """Run ``argv`` to its end; return its stdout and peak RSS in bytes.

        GNU time measures the peak RSS. The benchmark's own process cannot:
        a child's peak counts the memory of the process it was forked from.
        """
        with tempfile.NamedTemporaryFile("r") as rss:
            popen = subprocess.Popen(
                [GNU_TIME, "--format", "%M", "--output", rss.name,
                 *self.prefix, *argv],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=self.env, start_new_session=True,
            )  # fmt: skip
            try:
                stdout, stderr = popen.communicate()
            except BaseException:
                # Killing GNU time alone would leave the pull running.
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
                raise
            if popen.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(argv)} exited with code {popen.returncode}:\n{stderr}"
                )
            return stdout, int(rss.read().split()[-1]) * 1024

    def timed(
        self, prepare: Callable[[], None], pull: Callable[[], tuple[int, int]]
    ) -> Result:
        """Prepare, then time one pull and count what the delay proxy forwarded."""
        prepare()
        before = self.proxy.counts() if self.proxy else None
        started = time.perf_counter()
        fetched, peak_rss = pull()
        seconds = time.perf_counter() - started

        if self.proxy is None or before is None:
            return Result(seconds, fetched, peak_rss, None, None)
        after = self.proxy.counts()
        wire = after["down"] - before["down"]
        connections = after["connections"] - before["connections"]
        return Result(seconds, fetched, peak_rss, wire, connections)


def blob_names(layout: Path) -> set[str]:
    folder = layout / "blobs" / "sha256"
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def scenarios(
    puller: Puller, scratch: Path
) -> dict[str, tuple[Callable[[], None], Callable[[], tuple[int, int]]]]:
    """Return each scenario: how to set up its destination, and the timed pull."""
    store, layout = scratch / "store", scratch / "layout"
    original = f"{puller.host}/samples/base"

    def fresh(
        path: Path, seed: Callable[[], object] | None = None
    ) -> Callable[[], None]:
        def prepare() -> None:
            shutil.rmtree(path, ignore_errors=True)
            if seed:
                seed()

        return prepare

    chosen = {}
    for level in LEVELS:
        converted = f"{puller.host}/converted-{level}/base"
        chosen[update_name(level)] = (
            fresh(store, lambda image=converted: puller.apparate(f"{image}:v1", store)),
            lambda image=converted: puller.apparate(f"{image}:v2", store),
        )
        chosen[cold_name(level)] = (
            fresh(store),
            lambda image=converted: puller.apparate(f"{image}:v2", store),
        )
    return {
        **chosen,
        SKOPEO_FULL: (
            fresh(layout), lambda: puller.skopeo(f"{original}:v2", layout)
        ),
        SKOPEO_REUSE: (
            fresh(layout, lambda: puller.skopeo(f"{original}:v1", layout)),
            lambda: puller.skopeo(f"{original}:v2", layout),
        ),
    }  # fmt: skip


def measure(puller: Puller, scratch: Path, rounds: int) -> dict[str, Result]:
    """Run every scenario ``rounds`` times; keep medians and the peak RSS."""
    results = {}
    for name, (prepare, pull) in scenarios(puller, scratch).items():
        runs = [puller.timed(prepare, pull) for _ in range(rounds)]
        results[name] = Result(
            seconds=statistics.median(run.seconds for run in runs),
            fetched=runs[-1].fetched,
            peak_rss=max(run.peak_rss for run in runs),
            wire=runs[-1].wire,
            connections=runs[-1].connections,
        )
    shutil.rmtree(scratch / "store", ignore_errors=True)
    shutil.rmtree(scratch / "layout", ignore_errors=True)
    return results


@contextmanager
def converted_registry(scratch: Path) -> Iterator[str]:
    """Run the loopback registry with v1 and v2 converted at each of ``LEVELS``."""
    registry = start_registry("plain", scratch / "registry")
    try:
        for level in LEVELS:
            converted = f"{registry.host}/converted-{level}/base"
            # v2 reuses v1's frames, as a publisher converting updates would.
            for tag, reuse in (("v1", None), ("v2", [f"{converted}:v1"])):
                options = ConvertOptions(
                    store=scratch / "convert", level=level, reuse_from=reuse
                )
                convert(f"{registry.host}/samples/base:{tag}",
                        f"{converted}:{tag}", options)  # fmt: skip
        yield registry.host
    finally:
        registry.stop()


def measure_shaped(
    scratch: Path, rounds: int, rate: str, rtt_ms: float, env: dict[str, str]
) -> dict[str, Result]:
    """Serve the loopback registry's storage across the shaped link; measure."""
    storage = scratch / "registry" / "storage"
    with (
        link.shaped_link(rate) as shaped,
        link.start_registry(shaped, storage, scratch / "shaped-registry") as host,
        link.start_delay_proxy(shaped, host, rtt_ms) as proxy,
    ):
        puller = Puller(proxy.host, shaped.in_client([]), proxy, env)
        return measure(puller, scratch, rounds)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the cleanup in ``finally`` blocks runs."""
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="pulls per scenario")
    parser.add_argument("--rate", default="100mbit", help="tbf rate of the link")
    parser.add_argument(
        "--rtt-ms", type=float, default=20.0, help="round trip the proxy adds"
    )
    parser.add_argument(
        "--skip-shaped", action="store_true", help="measure on loopback only"
    )
    args = parser.parse_args(argv)
    stop_on_sigterm()

    with tempfile.TemporaryDirectory(prefix="apparate-delta-") as temporary:
        scratch = Path(temporary)
        # A user's config.toml could add mirrors; the benchmark uses none.
        settings = scratch / "config.toml"
        settings.write_text("")
        env = dict(os.environ, APPARATE_CONFIG=str(settings))
        links = []
        with converted_registry(scratch) as host:
            results = measure(Puller(host, [], None, env), scratch, args.rounds)
            links.append(Link(LOOPBACK, f"loopback, registry {host}", results))
        if not args.skip_shaped:
            results = measure_shaped(scratch, args.rounds, args.rate, args.rtt_ms, env)
            description = (
                f"shaped link: tbf {args.rate} both ways between two network "
                f"namespaces, {args.rtt_ms:g} ms round trip added by the delay proxy"
            )
            links.append(Link(SHAPED, description, results))
        casync = casync_delta.measure(scratch / "casync")
    print_report(links, casync, args.rounds, LEVELS)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the namespaces and processes are removed", file=sys.stderr)
        sys.exit(130)
