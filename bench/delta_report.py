"""Print the update-pull figures of ``bench.delta``, the ratios and the targets.

The speed targets are judged on the shaped link, where the bytes saved
matter. apparate's update pull should be at least 8 times faster than
skopeo's full pull of v2, and 3 times faster than skopeo's pull into a
layout that contains v1. It should fetch fewer bytes than ``casync extract
--seed``. A cold pull of the converted image should be no slower than
skopeo's pull of the gzip original, on either link. Nothing asserts a time:
this prints whether each target was met in this run.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.casync_delta import CasyncDelta

APPARATE_V1_TO_V2 = "apparate v1 -> v2"
SKOPEO_FULL = "skopeo v2, empty layout"
SKOPEO_REUSE = "skopeo v2, v1 in layout"
APPARATE_COLD = "apparate cold, converted"
LOOPBACK = "loopback"
SHAPED = "shaped"
FULL_PULL_SPEEDUP = 8.0
REUSE_SPEEDUP = 3.0


@dataclass(frozen=True)
class Result:
    """Figures of one pull, or of a scenario's rounds.

    For a scenario, ``seconds`` is the median over its rounds, ``peak_rss``
    the largest, and the rest come from the last round. ``wire`` (bytes the
    delay proxy sent to the client) and ``connections`` (TCP connections the
    client opened) are None on loopback.
    """

    seconds: float
    fetched: int
    peak_rss: int
    wire: int | None
    connections: int | None


@dataclass(frozen=True)
class Link:
    """Results on one link, with a line that describes how the link was made."""

    label: str
    description: str
    results: dict[str, Result]


def print_report(links: list[Link], casync: CasyncDelta, rounds: int) -> None:
    print(
        f"update pull (v1 held, v2 wanted), median seconds of {rounds} rounds; "
        "MB fetched: apparate's\ncount (chunk tables included) or the blobs "
        "skopeo added; wire MB: bytes the delay\nproxy sent to the client, "
        "headers included; conns: TCP connections the client\nopened through "
        "the proxy; RSS: peak of the pulling process"
    )
    for link in links:
        print_table(link)
    print(
        f"\ncasync extract --seed, v1 tars -> v2 tars ({casync.tar_bytes / 1e6:.1f}"
        f" MB of tar): {casync.total / 1e6:.2f} MB fetched\n"
        f"  ({casync.index_bytes / 1e6:.2f} MB of .caibx indexes, "
        f"{casync.chunk_bytes / 1e6:.2f} MB in {casync.chunks_fetched} chunks)"
    )
    print_ratios(links, casync)
    print_targets(links, casync)


def print_table(link: Link) -> None:
    print(f"\n{link.description}")
    print(
        f"{'scenario':<26} {'seconds':>8} {'MB fetched':>11} {'wire MB':>8} "
        f"{'conns':>6} {'RSS MB':>7}"
    )
    for name, result in link.results.items():
        wire = "-" if result.wire is None else f"{result.wire / 1e6:.2f}"
        connections = "-" if result.connections is None else result.connections
        print(
            f"{name:<26} {result.seconds:>8.3f} {result.fetched / 1e6:>11.2f} "
            f"{wire:>8} {connections:>6} {result.peak_rss / 1e6:>7.0f}"
        )


def print_ratios(links: list[Link], casync: CasyncDelta) -> None:
    print(
        "\nratios: the other's seconds (or bytes) over apparate's"
        f"\n{'link':<9} {'other':<24} {'apparate':<25} {'time':>7} {'bytes':>7}"
    )
    pairs = [
        (SKOPEO_FULL, APPARATE_V1_TO_V2),
        (SKOPEO_REUSE, APPARATE_V1_TO_V2),
        (SKOPEO_FULL, APPARATE_COLD),
    ]
    for link in links:
        for other, ours in pairs:
            theirs, mine = link.results[other], link.results[ours]
            print(
                f"{link.label:<9} {other:<24} {ours:<25} "
                f"{theirs.seconds / mine.seconds:>6.2f}x "
                f"{theirs.fetched / mine.fetched:>6.2f}x"
            )
    fetched = links[0].results[APPARATE_V1_TO_V2].fetched
    print(
        f"{'-':<9} {'casync extract --seed':<24} {APPARATE_V1_TO_V2:<25} "
        f"{'-':>7} {casync.total / fetched:>6.2f}x"
    )


def print_targets(links: list[Link], casync: CasyncDelta) -> None:
    by_label = {link.label: link.results for link in links}
    print("\ntargets:")
    shaped = by_label.get(SHAPED)
    if shaped is None:
        print("  shaped link not measured (--skip-shaped): speed targets not judged")
    else:
        full = speedup(shaped, SKOPEO_FULL, APPARATE_V1_TO_V2)
        reuse = speedup(shaped, SKOPEO_REUSE, APPARATE_V1_TO_V2)
        verdict(full >= FULL_PULL_SPEEDUP,
                f"shaped: apparate v1 -> v2 >= {FULL_PULL_SPEEDUP:g}x faster than "
                f"skopeo's full pull of v2: {full:.2f}x")  # fmt: skip
        verdict(reuse >= REUSE_SPEEDUP,
                f"shaped: apparate v1 -> v2 >= {REUSE_SPEEDUP:g}x faster than "
                f"skopeo with v1 in the layout: {reuse:.2f}x")  # fmt: skip
    fetched = links[0].results[APPARATE_V1_TO_V2].fetched
    verdict(fetched < casync.total,
            f"apparate v1 -> v2 fetches fewer bytes than casync: "
            f"{fetched / 1e6:.2f} MB against {casync.total / 1e6:.2f} MB")  # fmt: skip
    for link in links:
        cold = speedup(link.results, SKOPEO_FULL, APPARATE_COLD)
        verdict(cold >= 1.0,
                f"{link.label}: cold pull of the converted image no slower than "
                f"skopeo of the gzip original: {cold:.2f}x")  # fmt: skip
    rss = max(r.peak_rss for link in links for r in apparate_results(link))
    print(f"  {'info':<8} peak RSS of apparate over all its pulls: {rss / 1e6:.0f} MB")


def speedup(results: dict[str, Result], other: str, ours: str) -> float:
    return results[other].seconds / results[ours].seconds


def apparate_results(link: Link) -> list[Result]:
    return [r for name, r in link.results.items() if name.startswith("apparate")]


def verdict(met: bool, text: str) -> None:
    print(f"  {'met' if met else 'NOT MET':<8} {text}")
