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

SKOPEO_FULL = "skopeo v2, empty layout"
SKOPEO_REUSE = "skopeo v2, v1 in layout"
LOOPBACK = "loopback"
SHAPED = "shaped"
FULL_PULL_SPEEDUP = 8.0
REUSE_SPEEDUP = 3.0


def update_name(level: int) -> str:
    """Name the update pull of the images converted at zstd ``level``."""
    return f"apparate v1 -> v2, zstd {level}"


def cold_name(level: int) -> str:
    """Name the cold pull of the image converted at zstd ``level``."""
    return f"apparate cold, zstd {level}"


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


def print_report(
    links: list[Link], casync: CasyncDelta, rounds: int, levels: tuple[int, ...]
) -> None:
    print(
        f"update pull (v1 held, v2 wanted), median seconds of {rounds} rounds; "
        "MB fetched: apparate's\ncount (chunk tables included) or the blobs "
        "skopeo added; wire MB: bytes the delay\nproxy sent to the client, "
        "headers included; conns: TCP connections the client\nopened through "
        "the proxy; RSS: peak of the pulling process; zstd N: the images were "
        "converted\nwith --compress-level N"
    )
    for link in links:
        print_table(link)
    print(
        f"\ncasync extract --seed, v1 tars -> v2 tars ({casync.tar_bytes / 1e6:.1f}"
        f" MB of tar): {casync.total / 1e6:.2f} MB fetched\n"
        f"  ({casync.index_bytes / 1e6:.2f} MB of .caibx indexes, "
        f"{casync.chunk_bytes / 1e6:.2f} MB in {casync.chunks_fetched} chunks)"
    )
    for level in levels:
        print_ratios(links, casync, level)
    for level in levels:
        print_targets(links, casync, level)
    rss = max(r.peak_rss for link in links for r in apparate_results(link))
    print(f"\npeak RSS of apparate over all its pulls: {rss / 1e6:.0f} MB")


def print_table(link: Link) -> None:
    print(f"\n{link.description}")
    print(
        f"{'scenario':<28} {'seconds':>8} {'MB fetched':>11} {'wire MB':>8} "
        f"{'conns':>6} {'RSS MB':>7}"
    )
    for name, result in link.results.items():
        wire = "-" if result.wire is None else f"{result.wire / 1e6:.2f}"
        connections = "-" if result.connections is None else result.connections
        print(
            f"{name:<28} {result.seconds:>8.3f} {result.fetched / 1e6:>11.2f} "
            f"{wire:>8} {connections:>6} {result.peak_rss / 1e6:>7.0f}"
        )


def print_ratios(links: list[Link], casync: CasyncDelta, level: int) -> None:
    update, cold = update_name(level), cold_name(level)
    print(
        f"\nratios, images converted at zstd {level}: the other's seconds (or "
        f"bytes) over apparate's\n{'link':<9} {'other':<24} {'apparate':<28} "
        f"{'time':>7} {'bytes':>7}"
    )
    pairs = [(SKOPEO_FULL, update), (SKOPEO_REUSE, update), (SKOPEO_FULL, cold)]
    for link in links:
        for other, ours in pairs:
            theirs, mine = link.results[other], link.results[ours]
            print(
                f"{link.label:<9} {other:<24} {ours:<28} "
                f"{theirs.seconds / mine.seconds:>6.2f}x "
                f"{theirs.fetched / mine.fetched:>6.2f}x"
            )
    fetched = links[0].results[update].fetched
    print(
        f"{'-':<9} {'casync extract --seed':<24} {update:<28} "
        f"{'-':>7} {casync.total / fetched:>6.2f}x"
    )


def print_targets(links: list[Link], casync: CasyncDelta, level: int) -> None:
    update, cold_pull = update_name(level), cold_name(level)
    by_label = {link.label: link.results for link in links}
    print(f"\ntargets, images converted at zstd {level}:")
    shaped = by_label.get(SHAPED)
    if shaped is None:
        print("  shaped link not measured (--skip-shaped): speed targets not judged")
    else:
        full = speedup(shaped, SKOPEO_FULL, update)
        reuse = speedup(shaped, SKOPEO_REUSE, update)
        verdict(full >= FULL_PULL_SPEEDUP,
                f"shaped: update pull >= {FULL_PULL_SPEEDUP:g}x faster than "
                f"skopeo's full pull of v2: {full:.2f}x")  # fmt: skip
        verdict(reuse >= REUSE_SPEEDUP,
                f"shaped: update pull >= {REUSE_SPEEDUP:g}x faster than "
                f"skopeo with v1 in the layout: {reuse:.2f}x")  # fmt: skip
    fetched = links[0].results[update].fetched
    verdict(fetched < casync.total,
            f"update pull fetches fewer bytes than casync: "
            f"{fetched / 1e6:.2f} MB against {casync.total / 1e6:.2f} MB")  # fmt: skip
    for link in links:
        cold = speedup(link.results, SKOPEO_FULL, cold_pull)
        verdict(cold >= 1.0,
                f"{link.label}: cold pull of the converted image no slower than "
                f"skopeo of the gzip original: {cold:.2f}x")  # fmt: skip


def speedup(results: dict[str, Result], other: str, ours: str) -> float:
    return results[other].seconds / results[ours].seconds


def apparate_results(link: Link) -> list[Result]:
    return [r for name, r in link.results.items() if name.startswith("apparate")]


def verdict(met: bool, text: str) -> None:
    print(f"  {'met' if met else 'NOT MET':<8} {text}")
